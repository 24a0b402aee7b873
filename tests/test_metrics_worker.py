"""The Celery worker's metrics endpoint and its start-up warnings, as real processes.

Workers run against the test Redis (the broker on its own database, a queue
and a namespace per test) and are stopped by PID. Tasks are sent by a
Celery client, as beat would send them.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.conftest import REDIS_URL
from tests.metrics_scrape import Samples, scrape, total, wait_for
from tests.servers import free_port
from tests.test_worker import Cluster, broker_url
from tieredstore.store import TieredStore
from tieredstore.tiers.redis import RedisKeys

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def two_free_ports() -> int:
    """A port ``p`` with ``p + 1`` free too (a prefork worker of two serves on both)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


@pytest.fixture
def namespace() -> str:
    return f"wmetrics-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"tstest-{uuid.uuid4().hex[:10]}"
    yield name
    broker = redis.Redis.from_url(broker_url())
    for key in broker.scan_iter(match=f"*{name}*"):
        broker.delete(key)
    broker.close()


@pytest.fixture
def make_cluster(tmp_path: Path, redis_prefix: str, namespace: str,
                 queue: str) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDSTORE_")}
        env.update({
            "PYTHONPATH": str(ROOT), "TIEREDSTORE_REDIS_URL": REDIS_URL,
            "TIEREDSTORE_PREFIX": redis_prefix, "TIEREDSTORE_NAMESPACE": namespace,
            "TIEREDSTORE_BROKER_URL": broker_url(), "TIEREDSTORE_QUEUE": queue,
            "TIEREDSTORE_LOCK_TTL": "5", "TIEREDSTORE_TIME_BUDGET": "2",
        })
        env.update({f"TIEREDSTORE_{k.upper()}": v for k, v in settings.items()})
        cluster = Cluster(tmp_path, env)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def sender(queue: str) -> Iterator[Callable[[str], None]]:
    client = Celery("tieredstore-test-client", broker=broker_url())

    def send(task: str) -> None:
        client.send_task(f"tieredstore.{task}", queue=queue)

    yield send
    client.close()


def start_worker(cluster: Cluster, name: str, *pool: str) -> None:
    import sys

    cluster._start(name, [
        sys.executable, "-m", "celery", "-A", "tieredstore.worker", "worker", *pool,
        "-Q", cluster.env["TIEREDSTORE_QUEUE"], "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info"])


def serving(port: int) -> Samples | None:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None


def test_a_solo_worker_serves_its_task_metrics(
    make_cluster: Callable[..., Cluster], sender: Callable[[str], None], pg_url: str,
    redis_client: Any, redis_prefix: str, pg_engine: Any, namespace: str,
) -> None:
    store = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                     prefix=redis_prefix, memory_max_bytes=None)
    for i in range(5):
        store.save(f"s{i}", [{"role": "user", "content": f"message {i}"}])
    port = free_port()
    cluster = make_cluster(database_url=pg_url, archive_after="0", metrics_port=str(port))
    start_worker(cluster, "worker", "-P", "solo")
    wait_for(lambda: serving(port), 60, "the worker to serve its metrics", pause=0.2)
    sender("expire")
    sender("archive_idle")

    def ran() -> Samples | None:
        samples = serving(port)
        if samples is None or total(samples, "tieredstore_worker_tasks_total",
                                    task="archive_idle", outcome="ran") < 1:
            return None
        if total(samples, "tieredstore_worker_tasks_total", task="expire", outcome="ran") < 1:
            return None
        return samples

    samples = wait_for(ran, 60, "both tasks to run", pause=0.2)
    assert total(samples, "tieredstore_maintenance_runs_total", task="expire") >= 1
    assert total(samples, "tieredstore_maintenance_duration_seconds_count",
                 task="archive_idle") >= 1
    assert total(samples, "tieredstore_maintenance_items_total", task="archive_idle",
                 kind="changed") == 5
    cluster.stop()
    store.close()
    log = cluster.log("worker")
    assert f"serving metrics on http://127.0.0.1:{port}/metrics" in log
    assert "is not set" not in log  # both tiers configured: no start-up warning


def test_a_worker_without_an_archive_says_so_at_start_and_in_each_archive_idle_run(
    make_cluster: Callable[..., Cluster], sender: Callable[[str], None], redis_client: Any,
    redis_prefix: str, namespace: str,
) -> None:
    """Prefork with two children: each serves its own figures, on port and port + 1."""
    port = two_free_ports()
    cluster = make_cluster(metrics_port=str(port))
    start_worker(cluster, "worker", "-P", "prefork", "-c", "2")
    wait_for(lambda: serving(port) is not None and serving(port + 1) is not None, 60,
             "both children to serve their metrics", pause=0.2)
    sender("archive_idle")
    sender("archive_idle")
    runs_key = RedisKeys(redis_prefix, namespace).root + "maint:runs"

    def reported() -> list[dict[str, Any]]:
        runs = [json.loads(raw) for raw in redis_client.lrange(runs_key, 0, -1)]
        return [run for run in runs if run.get("task") == "archive_idle"]

    runs = wait_for(lambda: len(reported()) >= 2 and reported(), 60, "two archive_idle runs")
    assert all(run["skipped"] == "no_archive" and "result" not in run for run in runs)

    def counted() -> bool:
        both = [serving(port), serving(port + 1)]
        return sum(total(s, "tieredstore_worker_tasks_total", task="archive_idle",
                         outcome="no_archive") for s in both if s is not None) >= 2

    wait_for(counted, 30, "the children to count the skipped runs", pause=0.2)
    cluster.stop()
    log = cluster.log("worker")
    warned = [line for line in log.splitlines()
              if "WARNING" in line and "TIEREDSTORE_DATABASE_URL is not set" in line]
    assert len(warned) == 1, log
    assert "archive_idle" in warned[0]
    assert log.count("archive_idle: did nothing: the store has no archive") >= 2
