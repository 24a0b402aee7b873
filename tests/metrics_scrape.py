"""Reading Prometheus metrics the way a scraper does: over HTTP, in the text format."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def read(registry: CollectorRegistry) -> Samples:
    """The samples of ``registry`` without HTTP."""
    return parse(generate_latest(registry).decode())


def value(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent, as Prometheus has it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include these."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             pause: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
