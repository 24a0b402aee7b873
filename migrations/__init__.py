"""Alembic migrations for tieredstore's archive tables.

Shipped in the wheel so an installed ``tieredstore`` can migrate its archive:
run :func:`tieredstore.migrate` (or ``alembic -c <this folder>/alembic.ini``).
"""
