"""Processes the provisioning tests drive: a real Celery worker, a private Redis, and an HTTP proxy in
front of the testbed apiserver that can hold requests (to kill a worker in the middle of an apply)."""

import base64
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from portal.celery import app as celery_app
from quotas.models import Grant, ServingDeployment
from quotas.states import RequestState
from tests.testbed import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, check: Callable[[], Any], timeout: float, diagnostics: Callable[[], str]) -> Any:
    return wait_until(what, check, timeout, diagnostics=diagnostics)


def settled(grant: Grant, state: str = RequestState.ACTIVE) -> Grant | None:
    """The grant once the worker has applied its current generation and it reached `state`."""
    fresh = Grant.objects.select_related("request").get(pk=grant.pk)
    if fresh.request.state == state and fresh.observed_generation == fresh.generation:
        return fresh
    return None


# The conditions of a grant whose objects the cluster holds and enforces: (status, reason) by type.
PROVISIONED = {
    "Applied": ("True", "Applied"),
    "QuotaEnforced": ("True", "QuotaActive"),
    "PolicyBound": ("True", "Enforced"),
    "ContractInjected": ("True", "Injected"),
    "Ready": ("True", "Provisioned"),
}


def conditions(obj: Grant | ServingDeployment) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj.conditions}


# --- the Celery worker ------------------------------------------------------------------------


@dataclass
class Worker:
    """`celery worker -B` in its own process group, on the test database and the given broker
    (`queues` and `beat` make a worker of some shard queues only, without beat)."""

    env: dict[str, str]
    workdir: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Only these queues (comma-separated; empty: the default queue), and with or without beat.
    queues: str = ""
    beat: bool = True

    @property
    def schedule_path(self) -> Path:
        return self.workdir / f"{self.name}-beat-schedule"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        assert not self.running
        self.starts += 1
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                *(
                    ["--beat", f"--schedule={self.workdir / f'{self.name}-beat-schedule'}"]
                    if self.beat
                    else []
                ),
                *([f"--queues={self.queues}"] if self.queues else []),
                "--pool=prefork",
                "--concurrency=1",
                "--loglevel=INFO",
                f"--hostname={self.name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait(
            f"worker {self.name} to start",
            lambda: " ready." in self.log_path.read_text(errors="replace") or not self.running,
            timeout,
            self.tail,
        )
        assert self.running, f"worker {self.name} exited at start\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL the whole worker (main process, pool child and beat) at once, like a lost node."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def worker_env(*, database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "PYTHONUNBUFFERED": "1",
        # Test pace: sweep often, resync soon, retry an unreachable cluster within seconds.
        "PORTAL_SWEEP_SECONDS": "2",
        "PORTAL_RESYNC_SECONDS": "6",
        "PORTAL_RETRY_BACKOFF_MAX_SECONDS": "3",
    }
    env.update(extra)
    return env


@contextmanager
def celery_publishing_to(broker_url: str) -> Iterator[None]:
    """Make this test process queue tasks on another broker (the private Redis of a fault test)."""

    def reset() -> None:
        # Only forget the app's pools: kombu keeps them in a registry per broker URL, and closing
        # one would leave a closed pool behind for the next user of that URL.
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    previous = celery_app.conf.broker_url
    reset()
    celery_app.conf.broker_url = broker_url
    try:
        yield
    finally:
        reset()
        celery_app.conf.broker_url = previous


# --- a private Redis --------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A throwaway redis-server without persistence: a restart loses every queued message."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/services.sh installs it)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait("redis to listen", self._listening, 10, lambda: "")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --- an apiserver proxy that can hold requests ------------------------------------------------


class HoldingProxy:
    """Plain HTTP in, the testbed apiserver (HTTPS, admin client certificate) out.

    `hold(pattern)` parks every request whose "METHOD path" matches until `release()`; a parked
    request is then dropped unanswered, as it would be for a client that died meanwhile. `seen`
    lists every request that came through.
    """

    def __init__(self, kubeconfig: str) -> None:
        doc = yaml.safe_load(kubeconfig)
        context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
        target = urlsplit(cluster["server"])
        self._target = (target.hostname, target.port)
        self._dir = tempfile.mkdtemp(prefix="prov-proxy-")
        paths = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            path = Path(self._dir) / key
            path.write_bytes(base64.b64decode(user.get(key) or cluster.get(key)))
            paths[key] = str(path)
        self._ssl = ssl.create_default_context(cafile=paths["certificate-authority-data"])
        self._ssl.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
        self._pattern: re.Pattern[str] | None = None
        self._released = threading.Event()
        self.held = 0
        # Every request that reached the proxy, as "METHOD path": what a test may count.
        self.seen: list[str] = []
        self._seen_lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._seen_lock:
                    proxy.seen.append(f"{self.command} {self.path}")
                pattern = proxy._pattern
                if pattern is not None and pattern.search(f"{self.command} {self.path}"):
                    proxy.held += 1
                    proxy._released.wait()
                    self.close_connection = True
                    return
                upstream = http.client.HTTPSConnection(*proxy._target, context=proxy._ssl, timeout=30)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "authorization", "connection", "content-length")
                }
                upstream.request(self.command, self.path, body or None, headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold(self, pattern: str) -> None:
        self._released.clear()
        self._pattern = re.compile(pattern)

    def release(self) -> None:
        self._pattern = None
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)
