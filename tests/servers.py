"""Throwaway servers for failure tests: a private redis-server and a TCP proxy.

Both listen on loopback only and are stopped by the tests that start them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'}")


class RedisServer:
    """A private redis-server process on its own port, nothing kept on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tieredstore-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)
        self.process = None
        wait_for_port(self.port, up=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpProxy:
    """Forwards a loopback port to a server; ``down()`` cuts every connection.

    Lets a test take a database "offline" and back without touching the
    shared server. ``stall()`` black-holes it instead: connections stay open
    (new ones are accepted) but nothing is forwarded any more, in either
    direction, until ``resume()``.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepting = threading.Event()
        self._stalled = threading.Event()

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._accepting.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def down(self) -> None:
        self._accepting.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if not self._accepting.is_set():
                client.close()
                return
            if self._stalled.is_set():
                with self._lock:
                    self._conns.append(client)  # held open, never answered
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._stalled.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class BlackHole:
    """A loopback listener that accepts connections and never answers.

    What a hung or partitioned server looks like to a client whose TCP
    handshake still succeeds (the kernel completes it and ACKs whatever is
    sent), so only client-side timeouts can end the wait. ``close()`` drops
    every connection and the listener.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept(self) -> None:
        while self._open:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)

    def close(self) -> None:
        self._open = False
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CLUSTER_SLOTS = 16384


class RedisClusterServers:
    """A private Redis Cluster: ``masters`` primaries with ``replicas`` replicas each.

    Every node is its own ``redis-server`` process on loopback, with its
    config, data and log in one temp dir; ``stop()`` kills them all by PID
    and removes the dir. Failover tests ``kill()`` a primary and
    ``wait_for_failover()`` until one of its replicas has taken its slots.
    Use it as a context manager, or call ``start()``/``stop()``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        ports: list[int] | None = None,
        node_timeout_ms: int = 2000,
        start_timeout: float = 60.0,
    ) -> None:
        total = masters * (1 + replicas)
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if ports is not None and len(ports) != total:
            raise ValueError(f"{total} ports needed, {len(ports)} given")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self._ports = list(ports) if ports is not None else self._free_ports(total)
        self.dir: Path | None = None
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._initial_replicas: dict[int, list[int]] = {}
        self._replicas_at_kill: dict[int, list[int]] = {}

    @staticmethod
    def _free_ports(count: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port()
            # the cluster bus listens on port + 10000: keep both in range and distinct
            if port + 10000 < 65536 and port not in ports:
                ports.append(port)
        return ports

    # -- addresses ---------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(self.host, port) for port in self._ports]

    @property
    def url(self) -> str:
        """A URL for ``RedisCluster.from_url``: the first node, database 0."""
        return f"redis://{self.host}:{self._ports[0]}/0"

    def live_ports(self) -> list[int]:
        return [p for p in self._ports if p in self.processes and self.processes[p].poll() is None]

    # -- life cycle --------------------------------------------------------

    def start(self) -> RedisClusterServers:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli must be installed")
        self.dir = Path(tempfile.mkdtemp(prefix="tieredstore-cluster-"))
        try:
            for port in self._ports:
                self.processes[port] = subprocess.Popen(
                    [binary, *self._node_args(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for port in self._ports:
                wait_for_port(port, timeout=self.start_timeout)
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"{self.host}:{port}" for port in self._ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=self.start_timeout,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    "redis-cli --cluster create failed:\n"
                    + create.stdout.decode(errors="replace")
                    + create.stderr.decode(errors="replace")
                )
            self._wait_ready(self.start_timeout)
            self._initial_replicas = {port: self.replicas_of(port) for port, _ in self.primaries()}
        except BaseException:
            self.stop()
            raise
        return self

    def _node_args(self, port: int) -> list[str]:
        assert self.dir is not None
        return [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.dir / f"nodes-{port}.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--bind",
            self.host,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / f"redis-{port}.log"),
            # replicas sync at once, and may take over however long they were cut off
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-replica-validity-factor",
            "0",
        ]

    def stop(self) -> None:
        """Kill every node by PID and remove the temp dir; safe to repeat."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------

    def _command(self, port: int, *args: str) -> str:
        """One command on one node, its raw reply text (no client-side parsing)."""
        import redis

        pool = redis.ConnectionPool(
            host=self.host, port=port, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            conn = pool.get_connection()
            conn.send_command(*args)
            reply = conn.read_response()
        finally:
            pool.disconnect()
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def _info(self, port: int, *args: str) -> dict[str, str]:
        text = self._command(port, *args)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by ``port`` (default: the first live node), parsed."""
        port = port if port is not None else self.live_ports()[0]
        table = []
        for line in self._command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            address = fields[1].split("@", 1)[0]
            table.append(
                {
                    "id": fields[0],
                    "port": int(address.rsplit(":", 1)[1]),
                    "flags": set(fields[2].split(",")),
                    "master": None if fields[3] == "-" else fields[3],
                    "slots": fields[8:],
                }
            )
        return table

    def primaries(self) -> list[tuple[int, int]]:
        """``(port, pid)`` of the current primaries not marked failed, by port."""
        found = []
        for node in self.nodes():
            if "master" in node["flags"] and not node["flags"] & {"fail", "fail?"}:
                process = self.processes.get(node["port"])
                found.append((node["port"], process.pid if process else -1))
        return sorted(found)

    def replicas_of(self, port: int) -> list[int]:
        """Ports of the replicas of the primary on ``port``, as the cluster sees them now."""
        table = self.nodes()
        ids = {node["port"]: node["id"] for node in table}
        return sorted(node["port"] for node in table if node["master"] == ids.get(port))

    def replica_of(self, port: int) -> int:
        """The (first) replica of the primary on ``port``."""
        replicas = self.replicas_of(port)
        if not replicas:
            raise LookupError(f"the node on port {port} has no replicas")
        return replicas[0]

    def pid(self, port: int) -> int:
        return self.processes[port].pid

    # -- faults ------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` by its PID and reap it."""
        with contextlib.suppress(Exception):
            self._replicas_at_kill[port] = self.replicas_of(port)
        process = self.processes[port]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def wait_for_failover(self, dead_port: int, timeout: float = 60.0) -> int:
        """Wait until a former replica of ``dead_port`` is primary and every live
        node reports ``cluster_state:ok`` with all slots served; returns its port."""
        deadline = time.monotonic() + timeout
        former = self._replicas_at_kill.get(dead_port) or self._initial_replicas.get(dead_port)
        if not former:
            raise ValueError(f"the node on port {dead_port} had no replicas to fail over to")
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                promoted = self._promoted(dead_port, former)
                if promoted is not None and self._all_ok(self.live_ports()):
                    return promoted
                last = f"promoted={promoted}"
            except Exception as exc:  # a node may refuse or reset while it reconfigures
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(
            f"no failover of the primary on port {dead_port} within {timeout}s ({last})"
        )

    def _promoted(self, dead_port: int, former: list[int]) -> int | None:
        table = self.nodes()
        dead = next(node for node in table if node["port"] == dead_port)
        if "fail" not in dead["flags"] or dead["slots"]:
            return None
        for node in table:
            if (
                node["port"] in former
                and "master" in node["flags"]
                and not node["flags"] & {"fail", "fail?"}
                and node["slots"]
            ):
                return int(node["port"])
        return None

    # -- readiness ---------------------------------------------------------

    def _all_ok(self, ports: list[int]) -> bool:
        for port in ports:
            info = self._info(port, "CLUSTER", "INFO")
            if info.get("cluster_state") != "ok":
                return False
            if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return False
        return True

    def _wait_ready(self, timeout: float) -> None:
        """Every node: state ok, all slots, knows every node; every replica linked."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                if self._ready():
                    return
                last = "not ready"
            except Exception as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"Redis Cluster on ports {self._ports} not ready in {timeout}s ({last})")

    def _ready(self) -> bool:
        if not self._all_ok(self._ports):
            return False
        for port in self._ports:
            info = self._info(port, "CLUSTER", "INFO")
            if info.get("cluster_known_nodes") != str(len(self._ports)):
                return False
            replication = self._info(port, "INFO", "replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        masters = [n for n in self.nodes() if "master" in n["flags"]]
        return len(masters) == self.masters
