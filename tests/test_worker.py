"""The Celery worker and beat, run as real processes against the real Redis broker.

Each test gets its own queue on a dedicated broker database (``/14`` of the
test Redis), its own Redis namespace and store keys under the run's prefix,
and stops every process it started, by PID.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import sqlalchemy as sa

from tests.conftest import REDIS_URL
from tieredstore.store import TieredStore

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery", "-A", "tieredstore.worker"]
BROKER_DB = 14
AMQP_URL = os.environ.get("TIEREDSTORE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

pytestmark = pytest.mark.slow


def broker_url() -> str:
    """The test Redis, on the database kept for the broker."""
    return urlsplit(REDIS_URL)._replace(path=f"/{BROKER_DB}").geturl()


def amqp_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1).close()
    except OSError:
        return False
    return True


class Cluster:
    """Worker and beat processes sharing one environment; stopped by PID on exit."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._start(name, [
            *CELERY, "worker", "-P", "solo", "-Q", self.env["TIEREDSTORE_QUEUE"],
            "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
            "--without-heartbeat", "-l", "info"])

    def start_beat(self, name: str) -> subprocess.Popen[bytes]:
        return self._start(name, [*CELERY, "beat", "-s", str(self.tmp / f"{name}-schedule"),
                                  "--pidfile=", "-l", "info"])

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=self.tmp, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pg_url(pg_database: Callable[[], str]) -> str:
    """A database of this module's own: its bulk rows must not skew the shared one's plans."""
    from tieredstore import migrate

    url = pg_database()
    migrate(url)
    return url


@pytest.fixture(scope="module")
def pg_engine(pg_url: str) -> Iterator[Any]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def namespace() -> str:
    return f"worker-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_cluster(tmp_path: Path, redis_prefix: str, pg_url: str,
                 namespace: str) -> Iterator[Callable[..., Cluster]]:
    queue = f"tstest-{uuid.uuid4().hex[:10]}"
    made: list[Cluster] = []

    def make(**settings: Any) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDSTORE_")}
        env.update({
            "PYTHONPATH": str(ROOT), "TIEREDSTORE_REDIS_URL": REDIS_URL,
            "TIEREDSTORE_DATABASE_URL": pg_url, "TIEREDSTORE_PREFIX": redis_prefix,
            "TIEREDSTORE_NAMESPACE": namespace, "TIEREDSTORE_BROKER_URL": broker_url(),
            "TIEREDSTORE_QUEUE": queue, "TIEREDSTORE_LOCK_TTL": "5",
            "TIEREDSTORE_TIME_BUDGET": "2", "TIEREDSTORE_VISIBILITY_TIMEOUT": "5",
        })
        env.update({f"TIEREDSTORE_{k.upper()}": str(v) for k, v in settings.items()})
        cluster = Cluster(tmp_path, env)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
    if any(c.env["TIEREDSTORE_BROKER_URL"].startswith("amqp") for c in made):
        from kombu import Connection

        with Connection(AMQP_URL) as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)
    broker = redis.Redis.from_url(broker_url())
    for key in broker.scan_iter(match=f"*{queue}*"):
        broker.delete(key)
    for tag, raw in broker.hscan_iter("unacked"):
        if queue.encode() in raw:
            broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)
    broker.close()


@pytest.fixture
def store(redis_client: Any, redis_prefix: str, pg_engine: Any,
          namespace: str) -> Iterator[TieredStore]:
    made = TieredStore.from_clients(redis=redis_client, engine=pg_engine, namespace=namespace,
                                    prefix=redis_prefix, memory_max_bytes=None)
    yield made
    made.close()


def runs(store: TieredStore) -> list[dict[str, Any]]:
    raw = store.redis.client.lrange(store.redis.keys.root + "maint:runs", 0, -1)
    return [json.loads(entry) for entry in reversed(raw)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def msg(sid: str, i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"{sid} message {i}"}


def archived(pg_engine: Any, namespace: str) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT session_id, seq, payload FROM tieredstore_messages WHERE namespace = :ns "
            "ORDER BY session_id, seq"), {"ns": namespace})
        for sid, seq, payload in rows:
            out.setdefault(sid, []).append((seq, bytes(payload)))
    return out


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_scheduled_tasks_fire_and_do_their_work(make_cluster: Callable[..., Cluster],
                                                store: TieredStore, pg_engine: Any,
                                                namespace: str, broker: str) -> None:
    """One worker and one beat on a one-second schedule: every task runs and does its job.

    With the Redis broker, and with RabbitMQ (any Celery broker works).
    """
    if broker == "amqp" and not amqp_reachable():
        pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL}")
    for i in range(30):
        store.save(f"idle-{i}", [msg(f"idle-{i}", j) for j in range(4)])
    for i in range(10):
        store.save(f"exp-{i}", [msg(f"exp-{i}", 0)], ttl=0.5)
    for i in range(10):
        store.save(f"long-{i}", [msg(f"long-{i}", j) for j in range(12)])
    cluster = make_cluster(archive_after=0.5, expire_interval=1, archive_interval=1,
                           trim_interval=1, max_messages=5, trim_keep="false",
                           **({"broker_url": AMQP_URL} if broker == "amqp" else {}))
    cluster.start_worker("worker")
    cluster.start_beat("beat")
    client, keys = store.redis.client, store.redis.keys

    def done() -> bool:
        tasks = {run["task"] for run in runs(store) if run.get("result", {}).get("changed")}
        if tasks != {"expire", "archive_idle", "trim"} or store.redis.count_indexed():
            return False
        rows = archived(pg_engine, namespace)
        return not any(sid.startswith("exp-") for sid in rows) and all(
            len(rows.get(f"long-{i}", ())) == 5 for i in range(10))
    wait_for(done, 40, "every task to run and finish its work")
    cluster.stop()
    rows = archived(pg_engine, namespace)
    for i in range(30):
        sid = f"idle-{i}"
        assert not client.exists(*keys.session(sid))
        assert store.load(sid, full=True) == [msg(sid, j) for j in range(4)]
    for i in range(10):
        assert f"exp-{i}" not in rows and not client.exists(*keys.session(f"exp-{i}"))
        history = rows[f"long-{i}"]
        assert len(history) == 5 and [s for s, _ in history] == list(range(7, 12))
    done_by = {run["task"] for run in runs(store) if run["chain"] == 0}
    assert done_by == {"expire", "archive_idle", "trim"}


def _worker_transaction_open(dsn: str, dbname: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
            "pg_backend_pid() AND xact_start IS NOT NULL AND backend_type = 'client backend'",
            (dbname,)).fetchone()
        return bool(row and row[0])


def test_sigkill_mid_batch_then_the_next_run_completes(
        make_cluster: Callable[..., Cluster], store: TieredStore, pg_engine: Any, pg_url: str,
        namespace: str) -> None:
    total, size = 3000, 20
    sids = [f"k{i:05d}" for i in range(total)]
    for sid in sids:
        store.save(sid, [msg(sid, j) for j in range(size)])
    cluster = make_cluster(archive_after=0, archive_interval=1, expire_interval=3600,
                           trim_interval=3600, batch_size=100, max_batches=1000)
    cluster.start_worker("first")
    cluster.start_beat("beat")
    url = sa.make_url(pg_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    client, keys = store.redis.client, store.redis.keys
    wait_for(lambda: store.redis.count_indexed() < total, 30, "archival to start")
    deadline = time.monotonic() + 20
    mid_transaction = False
    while time.monotonic() < deadline and store.redis.count_indexed() > 0:
        if _worker_transaction_open(dsn, str(url.database)):
            mid_transaction = True
            break
    cluster.kill("first")  # SIGKILL: no cleanup, lock left behind, message unacked
    left = store.redis.count_indexed()
    assert mid_transaction and 0 < left < total, "the kill did not land inside a batch"
    cluster.start_worker("second")
    wait_for(lambda: store.redis.count_indexed() == 0, 60, "the next run to finish archiving")
    cluster.stop()
    rows = archived(pg_engine, namespace)
    assert sorted(rows) == sids, "sessions lost"
    for sid in sids:
        assert [seq for seq, _ in rows[sid]] == list(range(size)), sid
        assert [json.loads(p)["content"] for _, p in rows[sid]] == [
            msg(sid, j)["content"] for j in range(size)]
        assert not client.exists(*keys.session(sid))
    after = [run for run in runs(store) if run["pid"] == cluster.procs["second"].pid]
    assert any(run.get("result", {}).get("changed") for run in after)


def test_two_workers_two_beats_run_each_task_at_most_once_per_interval(
        make_cluster: Callable[..., Cluster], store: TieredStore) -> None:
    """Two beats send every task each second to two workers; no slot runs twice.

    Nothing asserted depends on how fast the machine is. Runs are keyed by
    interval slot, claimed atomically by Redis's clock, so a slot never appears
    twice in the run log; slots may be missed under load (a message expires
    unrun after one interval), so the test waits -- up to a generous deadline --
    until each task ran in three slots, both workers ran and a second beat's
    message was refused, rather than sleeping a fixed time. One task's runs
    never overlap: their ``held`` spans are read inside the lock (one host,
    one clock). Lock TTL and visibility timeout are long, so a stalled process
    neither loses its lock nor gets its message redelivered.
    """
    for i in range(50):
        store.save(f"s{i}", [msg(f"s{i}", 0)])
    cluster = make_cluster(archive_after=3600, expire_interval=1, archive_interval=1,
                           trim_interval=1, lock_ttl=120, visibility_timeout=600)
    for name in ("worker-a", "worker-b"):
        cluster.start_worker(name)
    for name in ("beat-a", "beat-b"):
        cluster.start_beat(name)
    pids = {cluster.procs["worker-a"].pid, cluster.procs["worker-b"].pid}
    tasks = ("expire", "archive_idle", "trim")

    def suppressed() -> int:
        return sum(cluster.log(w).count("already ran") + cluster.log(w).count("holds the lock")
                   for w in ("worker-a", "worker-b"))

    def enough() -> bool:
        log = [run for run in runs(store) if run["chain"] == 0]
        return ({run["pid"] for run in log} == pids and suppressed() > 0 and all(
            len({run["slot"] for run in log if run["task"] == task}) >= 3 for task in tasks))

    wait_for(enough, 180, "three slots of every task, run by both workers")
    cluster.stop()
    log = runs(store)
    sent = sum(cluster.log(b).count("Sending due task") for b in ("beat-a", "beat-b"))
    assert all(run["chain"] == 0 for run in log)  # nothing to continue: runs come from beats
    assert len(log) + suppressed() <= sent  # each message ran or was refused, at most once
    assert {run["pid"] for run in log} == pids
    for task in tasks:
        mine = [run for run in log if run["task"] == task]
        slots = [run["slot"] for run in mine]
        assert len(slots) >= 3, f"{task} ran only {len(slots)} times"
        assert len(slots) == len(set(slots)), f"{task} ran twice in one interval: {slots}"
        assert not any(run["lock_lost"] for run in mine)
        spans = sorted(tuple(run["held"]) for run in mine)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two {task} runs overlapped"


def test_beat_makes_partitions_ahead_and_enforces_retention(
        make_cluster: Callable[..., Cluster], store: TieredStore, pg_engine: Any,
        namespace: str) -> None:
    """The worker's ``partitions`` and ``retain`` tasks, on a one-second schedule."""
    from tests.conftest import FakeClock
    from tieredstore.tiers.archive import ArchiveStore
    from tieredstore.tiers.archive.partitions import months_ahead, partition_name

    old = ArchiveStore(pg_engine, namespace=namespace, clock=FakeClock(1_740_000_000.0))
    old.save("old", [msg("old", 0), msg("old", 1)])
    old.save("old-held", [msg("old-held", 0)], metadata={"legal_hold": True})
    old.close()
    store.save("new", [msg("new", 0)])
    farthest = partition_name(months_ahead(int(time.time() * 1000), 5)[-1])
    cluster = make_cluster(retention_days=30, retain_interval=1, partitions_interval=1,
                           partitions_ahead=5)
    cluster.start_worker("worker")
    cluster.start_beat("beat")
    assert store.archive is not None

    def done() -> bool:
        tasks = {run["task"] for run in runs(store)}
        made = {p.name for p in store.archive.partitions()}  # type: ignore[union-attr]
        return {"retain", "partitions"} <= tasks and farthest in made and not (
            store.archive.exists("old"))  # type: ignore[union-attr]
    wait_for(done, 40, "retain to delete the old session and partitions to be made ahead")
    cluster.stop()
    assert store.archive.exists("old-held")
    assert store.load("new") == [msg("new", 0)]
    retained = [r for r in runs(store) if r["task"] == "retain" and r["result"]["changed"]]
    assert retained and retained[0]["result"]["skipped"] >= 1  # the held session
    store.delete("old-held")
