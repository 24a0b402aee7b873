# The tieredstore image: the library, its migrations and the maintenance worker.
# Used by docker-compose.yml for the migrate, worker and beat services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tieredstore ./tieredstore
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . \
    && useradd --create-home --uid 10001 tieredstore \
    && mkdir -p /var/lib/tieredstore/beat && chown -R tieredstore /var/lib/tieredstore
# Run from outside /app: the installed package (its worker is tieredstore.worker).
WORKDIR /var/lib/tieredstore
USER tieredstore
CMD ["tieredstore", "--help"]
