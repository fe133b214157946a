"""pytest plugin: the local Kubernetes testbed for tests marked `cluster`.

- `testbed` (session): the cluster whose kubeconfig path is in PORTAL_TEST_KUBECONFIG (`make test`
  sets it; point it at any cluster of your own) is used as is and never stopped. Without it, the
  local testbed cluster `gpu-portal-test` (PORTAL_TESTBED_NAME overrides the name) is started
  through scripts/testbed/testbed.py under a file lock shared by xdist workers and by concurrent
  pytest runs. The last user to leave stops it, and only when a test session started it: a
  cluster someone started by hand or with make stays up.
  It FAILS, never skips, when the cluster cannot be reached or started: integration tests that
  silently do not run prove nothing.
- `k8s_namespace` (function): a fresh, uniquely named namespace, deleted afterwards.

A local testbed cluster (started here, or named by PORTAL_TEST_KUBECONFIG pointing at a testbed's
own kubeconfig, as `make test` does) also lets tests stop and start its engines, Karpenter and
Kueue, through the `Testbed` object; for any other cluster those calls fail with the reason.
"""

import base64
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.models import Cluster
from tests.common import REPO_ROOT, PollTimeout, load_testbed_module, poll_until

__all__ = ["load_testbed_module"]  # re-exported for the tests that import it from here

KUBECONFIG_ENV = "PORTAL_TEST_KUBECONFIG"
NAME_ENV = "PORTAL_TESTBED_NAME"
DEFAULT_NAME = "gpu-portal-test"
# Objects tests create carry this label, so a crashed run's leftovers are easy to find.
TEST_LABEL = "gpu-portal.example.com/test"


@dataclass
class Testbed:
    name: str
    kubeconfig_path: Path
    kubeconfig: str = field(repr=False)
    topology: dict[str, Any] = field(repr=False)
    # A cluster run by scripts/testbed/testbed.py (its processes can be stopped and started).
    local: bool = False

    # Names the kwok Stages and the engines read (testbed/README.md, "Time that is real").
    BRING_UP_ANNOTATION = "gpu-portal.example.com/simulated-bring-up-seconds"
    LOAD_ANNOTATION = "gpu-portal.example.com/simulated-load-seconds"
    NODEPOOL_LABEL = "karpenter.sh/nodepool"

    def _module(self, what: str) -> ModuleType:
        if not self.local:
            _fail(f"{what} needs the local testbed; {self.kubeconfig_path} is not a testbed.py cluster.")
        return load_testbed_module()

    @property
    def node_bringup_seconds(self) -> float:
        """The simulated bring-up delay of elastic-pool nodes (Karpenter's), as `up` recorded it."""
        value = self._module("the node bring-up delay").node_bringup_seconds(self.name)
        if value is None:
            _fail(f"testbed {self.name!r} has no engines set up; run `testbed.py up --name {self.name}`.")
        return value

    @property
    def engine_ports(self) -> dict[str, int]:
        """karpenterMetrics, karpenterHealth, kueueWebhook, kueueHealth (127.0.0.1)."""
        return self._module("the engine ports").engine_ports(self.name)

    def stop_karpenter(self, graceful: bool = False) -> None:
        self._module("stopping Karpenter").stop_karpenter(self.name, graceful)

    def start_karpenter(self) -> None:
        self._module("starting Karpenter").start_karpenter(self.name)

    def stop_kueue(self, graceful: bool = False) -> None:
        self._module("stopping Kueue").stop_kueue(self.name, graceful)

    def start_kueue(self) -> None:
        self._module("starting Kueue").start_kueue(self.name)

    def engines_running(self) -> dict[str, bool]:
        return self._module("engine status").status(self.name).engines

    def render_nodepool(self, pool: dict[str, Any]) -> dict[str, Any]:
        """A NodePool for an elastic pool entry (as in the topology's `elasticPools`), with this
        cluster's bring-up delay; the same renderer testbed.py uses."""
        tb = self._module("rendering a NodePool")
        return tb.render_nodepool(self.topology, pool, self.node_bringup_seconds)

    @property
    def _current(self) -> tuple[dict[str, Any], dict[str, Any]]:
        doc = yaml.safe_load(self.kubeconfig)
        context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        return doc, cluster

    @property
    def server(self) -> str:
        return self._current[1]["server"]

    @property
    def ca_data(self) -> str:
        """The cluster's CA bundle (PEM), for registering it with a URL and a token."""
        data = self._current[1].get("certificate-authority-data", "")
        return base64.b64decode(data).decode() if data else ""

    @property
    def admin(self) -> Cluster:
        """An unsaved Cluster with the testbed's admin credentials: for fixtures without a database."""
        return Cluster(name=f"testbed-{self.name}", kubeconfig=self.kubeconfig)

    def cluster(self, name: str | None = None, **fields: Any) -> Cluster:
        """A saved Cluster row holding the testbed's kubeconfig (the test needs the `db` fixture)."""
        fields.setdefault("kubeconfig", self.kubeconfig)
        fields.setdefault("api_url", self.server)
        return Cluster.objects.create(name=name or f"testbed-{secrets.token_hex(4)}", **fields)


# --------------------------------------------------------------------------------------------
# Sharing one cluster between workers and sessions


def _state_dir(name: str) -> Path:
    path = REPO_ROOT / "var" / "testbed" / f"{name}.pytest"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(name: str) -> Iterator[Path]:
    state = _state_dir(name)
    with open(state / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield state
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _users(state: Path) -> set[int]:
    try:
        pids = set(json.loads((state / "users.json").read_text()))
    except (OSError, ValueError):
        return set()
    return {pid for pid in pids if _alive(pid)}


def _save_users(state: Path, pids: set[int]) -> None:
    (state / "users.json").write_text(json.dumps(sorted(pids)))


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def _external(path: str) -> Testbed:
    kubeconfig = Path(path)
    if not kubeconfig.is_file():
        _fail(f"{KUBECONFIG_ENV}={path} does not name a readable kubeconfig file.")
    tb = load_testbed_module()
    text = kubeconfig.read_text()
    # testbed.py names the kubeconfig's context after the cluster; `make test` passes the
    # testbed's own file, which makes the cluster local (its engines can be stopped).
    context = (yaml.safe_load(text) or {}).get("current-context") or ""
    if context and tb.kubeconfig_path(context).resolve() == kubeconfig.resolve():
        return Testbed(context, kubeconfig, text, tb.load_topology(), local=True)
    return Testbed("external", kubeconfig, text, tb.load_topology())


def _check_reachable(testbed: Testbed) -> None:
    try:
        ops.server_version(testbed.admin)
    except KubeError as exc:
        _fail(f"The test cluster ({testbed.kubeconfig_path}) does not answer: {exc.message}")


def _bringup_seconds() -> float:
    """Node bring-up delay for a test cluster this session creates: short, so tests wait seconds,
    but not zero, so that "Ready only after the bring-up" means something."""
    return float(os.environ.get("PORTAL_TEST_NODE_BRINGUP_SECONDS", "5"))


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    path = os.environ.get(KUBECONFIG_ENV)
    if path:
        bed = _external(path)
        _check_reachable(bed)
        yield bed
        return

    tb = load_testbed_module()
    name = os.environ.get(NAME_ENV, DEFAULT_NAME)
    with _locked(name) as state:
        problem = ""
        try:
            before = tb.status(name)
            if not before.running:
                tb.up(name, node_bringup_seconds=_bringup_seconds() if not before.exists else None)
                # Only a cluster a test session started is ever stopped by one (restarting a
                # stopped engine of someone's cluster does not count).
                if not before.components_running:
                    (state / "started-by-tests").touch()
            kubeconfig = tb.kubeconfig_path(name)
            bed = Testbed(name, kubeconfig, kubeconfig.read_text(), tb.load_topology(), local=True)
        except (tb.TestbedError, OSError) as exc:
            problem = str(exc)
        if problem:
            _fail(f"The Kubernetes testbed {name!r} could not be started: {problem}")
        _save_users(state, _users(state) | {os.getpid()})
    _check_reachable(bed)
    try:
        yield bed
    finally:
        with _locked(name) as state:
            users = _users(state) - {os.getpid()}
            _save_users(state, users)
            marker = state / "started-by-tests"
            if not users and marker.exists():
                tb.down(name)
                marker.unlink()


# --------------------------------------------------------------------------------------------
# Per-test helpers


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.2,
    diagnostics: Callable[[], str] | None = None,
) -> Any:
    """tests.common.poll_until, failing the test (without a traceback of the poll) on timeout."""
    try:
        return poll_until(what, check, timeout, interval, diagnostics)
    except PollTimeout as exc:
        pytest.fail(str(exc), pytrace=False)


def unique_name(prefix: str, hint: str = "") -> str:
    """A DNS-1123 label: prefix, a readable hint and a random suffix, at most 63 characters."""
    hint = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:36].strip("-")
    return "-".join(part for part in (prefix, hint, secrets.token_hex(3)) if part)


@pytest.fixture
def k8s_namespace(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_name("t", request.node.name)
    cluster = testbed.admin
    ops.apply(
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {TEST_LABEL: "true"}}},
    )
    # The ServiceAccount admission plugin refuses pods until the controller-manager has created
    # the namespace's default service account.
    wait_until(
        f"the default service account of namespace {name}",
        lambda: ops.get(cluster, "v1", "ServiceAccount", "default", name),
    )
    yield name
    ops.delete(cluster, "v1", "Namespace", name)
