#!/usr/bin/env python3
"""Local Kubernetes testbed: a kwok cluster (real apiserver, controller-manager and scheduler,
simulated kubelets) with the GPU node pools described in testbed/topology.yaml.

CLI:     python scripts/testbed/testbed.py up|down|status [--name N] [--extra-nodes N] [--port P]
                                             [--node-bringup-seconds S]
Library: up(), down(), status(), stop_apiserver(), start_apiserver(), stop_karpenter(),
         start_karpenter(), stop_kueue(), start_kueue(), apply_topology(), render_nodes(),
         render_nodepools(), render_instance_types(), node_bringup_seconds(), kubeconfig_path().

Besides kwokctl's components every cluster runs two engines as plain processes: Karpenter's kwok
provider (the autoscaler of the topology's elastic pools) and Kueue (job queueing); their files
(configuration, certificates, pid files) are in <cluster dir>/engines/, their logs in logs/.

Everything runs from binaries built by scripts/testbed/build.sh, so no step needs the network.
State lives under var/testbed/: kwokctl's workdir (etcd data, certificates, logs, pid files) in
var/testbed/kwok/clusters/<name>/, and the kubeconfig in var/testbed/kubeconfig for the default
cluster or var/testbed/<name>/kubeconfig for any other.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NAME = "gpu-portal"
TOPOLOGY_FILE = REPO_ROOT / "testbed" / "topology.yaml"
STAGES_FILE = REPO_ROOT / "testbed" / "kwok-stages.yaml"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "testbed" / "build.sh"
VAR_DIR = REPO_ROOT / "var" / "testbed"
KWOK_WORKDIR = VAR_DIR / "kwok"

FIELD_MANAGER = "gpu-portal-testbed"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# Start order of kwokctl's components; stopping walks it backwards so that nothing outlives the
# apiserver it talks to, and etcd goes last.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
# The apiserver is the bottleneck on small machines; more client threads only queue up there.
APPLY_PARALLELISM = 8
READY_TIMEOUT = 180.0

Json = dict[str, Any]


class TestbedError(RuntimeError):
    """A failure the user can act on; the CLI prints it without a traceback."""


def log(message: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Paths and binaries


def kubeconfig_path(name: str = DEFAULT_NAME) -> Path:
    if name == DEFAULT_NAME:
        return VAR_DIR / "kubeconfig"
    return VAR_DIR / name / "kubeconfig"


def cluster_dir(name: str = DEFAULT_NAME) -> Path:
    return KWOK_WORKDIR / "clusters" / name


@dataclass(frozen=True)
class Binaries:
    kube_bin: Path
    etcd_bin: Path
    kwok_bin: Path
    # Cache entries of the engines: bin/ plus the manifests build.sh copied out of their modules.
    karpenter_dir: Path
    kueue_dir: Path

    @property
    def karpenter(self) -> Path:
        # Karpenter's kwok provider is a command named `kwok`, like kwok's own controller.
        return self.karpenter_dir / "bin" / "kwok"

    @property
    def kueue(self) -> Path:
        return self.kueue_dir / "bin" / "kueue"

    @property
    def kwokctl(self) -> Path:
        return self.kwok_bin / "kwokctl"

    @property
    def kubectl(self) -> Path:
        return self.kube_bin / "kubectl"

    def all(self) -> list[Path]:
        kube = [self.kube_bin / c for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
        return [
            *kube,
            self.kubectl,
            self.etcd_bin / "etcd",
            self.kwok_bin / "kwok",
            self.kwokctl,
            self.karpenter,
            self.kueue,
        ]


def binaries() -> Binaries:
    """Locate the built binaries; build.sh owns the cache layout, so ask it rather than guess."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "paths"], capture_output=True, text=True)
    if result.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} paths failed: {result.stderr.strip()}")
    dirs = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    found = Binaries(
        Path(dirs["KUBE_BIN"]),
        Path(dirs["ETCD_BIN"]),
        Path(dirs["KWOK_BIN"]),
        Path(dirs["KARPENTER_DIR"]),
        Path(dirs["KUEUE_DIR"]),
    )
    # Named with their cache entry: Karpenter's binary is called kwok too.
    missing = [f"{p.parent.parent.name}/{p.name}" for p in found.all() if not os.access(p, os.X_OK)]
    if missing:
        raise TestbedError(
            f"the testbed binaries are not built (missing {', '.join(missing)} "
            f"under {found.kube_bin.parent.parent}).\n"
            "Run `make testbed-build` first: a one-time build from source that takes several minutes."
        )
    return found


def _kwokctl(bins: Binaries, name: str, *args: str, stdin: str = "") -> None:
    env = {
        **os.environ,
        "KWOK_WORKDIR": str(KWOK_WORKDIR),
        # kwokctl shells out to kubectl (found on PATH first) to probe the apiserver; without a
        # local one it would try to download it.
        "KWOK_KUBECTL_BINARY": str(bins.kubectl),
        "PATH": f"{bins.kube_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        [str(bins.kwokctl), "--name", name, *args],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    # Off a terminal kwokctl logs JSON; show its messages as progress lines instead.
    for line in proc.stderr:
        try:
            entry = json.loads(line)
            extra = entry.get("err") or entry.get("elapsed", {}).get("human", "")
            log(f"kwokctl: {entry['msg']}" + (f" ({extra})" if extra else ""))
        except (ValueError, KeyError, AttributeError):
            print(line, end="", file=sys.stderr)
    if proc.wait() != 0:
        raise TestbedError(
            f"kwokctl {' '.join(args[:2])} failed (exit {proc.returncode}); "
            f"component logs are in {cluster_dir(name) / 'logs'}"
        )


# --------------------------------------------------------------------------------------------
# Processes


def _kwok_config(name: str) -> Json | None:
    path = cluster_dir(name) / "kwok.yaml"
    if not path.exists():
        return None
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "KwokctlConfiguration":
            return doc
    return None


def _pid_file(name: str, component: str) -> Path:
    return cluster_dir(name) / "pids" / f"{component}.pid"


def _component_pid(name: str, component: str) -> int | None:
    """PID of a live component process, or None; a pid file can outlive its process (or be
    recycled after a reboot), so the command line is checked too."""
    try:
        pid = int(_pid_file(name, component).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError):
        return None
    if _exited(pid) or Path(cmdline).name != component:
        return None
    return pid


def _exited(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name; a zombie has already exited.
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _stop_component(name: str, component: str, graceful: bool = False, timeout: float = 90.0) -> bool:
    """Kill a component (SIGTERM first when `graceful`, SIGKILL after `timeout`); returns whether
    a process was running."""
    pid = _component_pid(name, component)
    if pid is not None:
        if graceful:
            os.kill(pid, signal.SIGTERM)
        if not graceful or not _wait_exit(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 10.0)
    # kwokctl only starts a component whose pid file is missing or dead.
    _pid_file(name, component).unlink(missing_ok=True)
    return pid is not None


def _component_states(name: str) -> dict[str, bool]:
    config = _kwok_config(name)
    if config is None:
        return {}
    names = [c["name"] for c in config.get("components", [])]
    return {c: _component_pid(name, c) is not None for c in names}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Every port a cluster's components listen on, as recorded in its kwok.yaml.
_PORT_OPTIONS = (
    "kubeApiserverPort",
    "etcdPort",
    "etcdPeerPort",
    "kwokControllerPort",
    "kubeControllerManagerPort",
    "kubeSchedulerPort",
)


@contextmanager
def _port_allocation() -> Iterator[Callable[[int | None], int]]:
    """Hand out ports for a new cluster, excluding those of every cluster in the workdir.

    kwokctl would pick ports itself by probing, but it neither sees ports of stopped components
    (a cluster whose apiserver a test has just killed) nor ports another kwokctl process is
    choosing at the same moment (parallel test sessions). So the ports are chosen here, under a
    lock held until the new cluster's kwok.yaml records them.
    """
    KWOK_WORKDIR.mkdir(parents=True, exist_ok=True)
    with open(KWOK_WORKDIR / "ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken: set[int] = set()
        for config_file in (KWOK_WORKDIR / "clusters").glob("*/kwok.yaml"):
            options = (_kwok_config(config_file.parent.name) or {}).get("options", {})
            taken |= {int(options[key]) for key in _PORT_OPTIONS if options.get(key)}
        for state_file in (KWOK_WORKDIR / "clusters").glob("*/engines/state.json"):
            taken |= {
                int(port) for port in _engine_state(state_file.parent.parent.name).get("ports", {}).values()
            }
        # Counting down from just below Linux's ephemeral range (32768+), which outgoing
        # connections draw from, like kwokctl does.
        candidates = (p for p in range(32767, 20000, -1) if p not in taken and _port_free(p))

        def allocate(wanted: int | None = None) -> int:
            if wanted is not None and (wanted in taken or not _port_free(wanted)):
                raise TestbedError(f"port {wanted} is already in use; choose another --port")
            port = wanted or next(candidates, None)
            if port is None:
                raise TestbedError("no free port left between 20000 and 32767")
            taken.add(port)
            return port

        yield allocate


# --------------------------------------------------------------------------------------------
# A minimal client for the testbed's own apiserver. Only the testbed's kwok certificates are
# ever used, so stdlib HTTPS is enough and keeps the module free of the kubernetes client.


class ApiError(TestbedError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class Api:
    def __init__(self, port: int, pki: Path) -> None:
        self.port = port
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._local = threading.local()

    @classmethod
    def for_cluster(cls, name: str) -> Api:
        config = _kwok_config(name)
        if config is None:
            raise TestbedError(f"testbed cluster {name!r} does not exist; run `testbed.py up --name {name}`")
        return cls(int(config["options"]["kubeApiserverPort"]), cluster_dir(name) / "pki")

    def _connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl, timeout=30)
            self._local.conn = conn
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        content_type: str = "application/json",
        ok: Iterable[int] = (200, 201),
        attempts: int = 6,
    ) -> Json:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                conn = self._connection()
                conn.request(method, path, payload, headers)
                resp = conn.getresponse()
                data = resp.read().decode()
            except (OSError, http.client.HTTPException):
                self._local.conn = None
                if last:
                    raise
                time.sleep(0.2 * 2**attempt)
                continue
            # Priority-and-fairness sheds load with 429 while 1000+ nodes are being written.
            if resp.status in (429, 500, 503, 504) and not last:
                time.sleep(0.2 * 2**attempt)
                continue
            if resp.status not in ok:
                raise ApiError(resp.status, method, path, data)
            is_json = resp.getheader("Content-Type", "").startswith("application/json")
            return json.loads(data) if data and is_json else {}
        raise AssertionError("unreachable")

    def get(self, path: str) -> Json:
        return self.request("GET", path)

    def apply(self, path: str, obj: Json) -> Json:
        query = f"fieldManager={FIELD_MANAGER}&force=true"
        return self.request("PATCH", f"{path}?{query}", obj, "application/apply-patch+yaml")

    def ready(self) -> bool:
        try:
            self.request("GET", "/readyz", attempts=1)
        except (OSError, http.client.HTTPException, TestbedError):
            self._local.conn = None
            return False
        return True


def _wait_for(what: str, check: Callable[[], bool], timeout: float, hint: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}. {hint}".strip())
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Topology -> Node manifests


def load_topology(path: Path = TOPOLOGY_FILE) -> Json:
    return yaml.safe_load(path.read_text())


def _render_node(topology: Json, pool: Json, zone: str, node_name: str) -> Json:
    prefix = topology["labelPrefix"]
    defaults = topology.get("nodeDefaults", {})
    pool_name = pool["name"]
    labels: dict[str, str] = {
        **defaults.get("labels", {}),
        MANAGED_BY_LABEL: FIELD_MANAGER,
        "kubernetes.io/hostname": node_name,
        "topology.kubernetes.io/region": topology["region"],
        "topology.kubernetes.io/zone": zone,
        "node.kubernetes.io/instance-type": pool["instanceType"],
        f"{prefix}pool": pool_name,
        f"{prefix}pool-class": pool["class"],
        f"{prefix}lifecycle": pool["lifecycle"],
    }
    resources = {
        "cpu": str(pool["cpu"]),
        "memory": str(pool["memory"]),
        "pods": str(defaults.get("pods", 110)),
    }
    taints = pool.get("taints", [])
    if "accelerator" in pool:
        accel = topology["accelerators"][pool["accelerator"]]
        gpus = int(pool["gpus"])
        labels |= {
            f"{prefix}type": accel["type"],
            f"{prefix}memory": str(accel["memoryGiB"]),
            f"{prefix}topology": accel["topology"],
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": accel["product"],
            "nvidia.com/gpu.memory": str(accel["memoryGiB"] * 1024),
            "nvidia.com/gpu.count": str(gpus),
        }
        mig = pool.get("mig")
        if mig:
            profile = mig["profile"]
            slices = str(gpus * int(mig["slicesPerGpu"]))
            labels |= {
                f"{prefix}mig-profile": profile,
                "nvidia.com/mig.capable": "true",
                "nvidia.com/mig.strategy": "mixed",
                f"nvidia.com/mig-{profile}.count": slices,
            }
            resources[f"nvidia.com/mig-{profile}"] = slices
        else:
            resources["nvidia.com/gpu"] = str(gpus)
        taints = pool.get("taints", topology.get("gpuTaints", []))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": labels,
            "annotations": dict(defaults.get("annotations", {})),
        },
        "spec": {
            "taints": [{**t, "value": str(t.get("value", "")).replace("{pool}", pool_name)} for t in taints],
        },
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def render_nodes(topology: Json, extra_nodes: int = 0) -> list[Json]:
    """Node manifests for every pool, plus `extra_nodes` benchmark nodes (names are stable, so
    growing or shrinking the count only touches the difference)."""
    nodes: list[Json] = []
    try:
        for pool in topology["pools"]:
            for zone, count in pool["nodes"].items():
                nodes += [
                    _render_node(topology, pool, zone, f"{pool['name']}-{zone}-{i}") for i in range(count)
                ]
        if extra_nodes:
            extra = topology["extraNodes"]
            zones = extra["zones"]
            nodes += [
                _render_node(topology, extra, zones[i % len(zones)], f"{extra['name']}-{i:05d}")
                for i in range(extra_nodes)
            ]
    except (KeyError, TypeError) as exc:
        raise TestbedError(f"invalid topology: missing or malformed {exc}") from exc
    names = [n["metadata"]["name"] for n in nodes]
    if len(set(names)) != len(names):
        raise TestbedError("invalid topology: duplicate node names")
    return nodes


_QUANTITY_SUFFIXES = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def _quantity(value: str) -> Decimal:
    number = value.rstrip("kmMGTPEi")
    return Decimal(number) * _QUANTITY_SUFFIXES[value[len(number) :]]


def _same_resources(live: Json | None, wanted: Json) -> bool:
    """The apiserver canonicalises quantities (2048Gi comes back as 2Ti), so compare values."""
    if not live or live.keys() != wanted.keys():
        return False
    return all(_quantity(str(live[k])) == _quantity(str(v)) for k, v in wanted.items())


# The node lifecycle controller adds these while a node is not Ready and removes them some time
# after; until then the scheduler skips the node.
_NODE_STATE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _node_ready(node: Json) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    taints = node.get("spec", {}).get("taints", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and not any(
        t["key"] in _NODE_STATE_TAINTS for t in taints
    )


def _list_managed_nodes(api: Api) -> list[Json]:
    selector = quote(f"{MANAGED_BY_LABEL}={FIELD_MANAGER}")
    return api.get(f"/api/v1/nodes?labelSelector={selector}")["items"]


def apply_topology(
    name: str = DEFAULT_NAME, extra_nodes: int = 0, topology_file: Path = TOPOLOGY_FILE
) -> int:
    """Create or update the topology's nodes, delete testbed nodes it no longer has, and wait
    until all are Ready and schedulable. Returns the number of nodes."""
    api = Api.for_cluster(name)
    desired = render_nodes(load_topology(topology_file), extra_nodes)
    wanted = {n["metadata"]["name"]: n for n in desired}

    def apply_node(node: Json) -> None:
        node_name = node["metadata"]["name"]
        live = api.apply(f"/api/v1/nodes/{node_name}", node)
        # Node status may be set on create, so a new node usually has it already; on updates the
        # main resource ignores status and it goes through the subresource. Setting allocatable
        # before kwok sees the node matters: kwok fills in its own defaults when it is missing.
        if not _same_resources(live.get("status", {}).get("allocatable"), node["status"]["allocatable"]):
            status = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node_name},
                "status": node["status"],
            }
            api.apply(f"/api/v1/nodes/{node_name}/status", status)

    def delete_node(node_name: str) -> None:
        api.request("DELETE", f"/api/v1/nodes/{node_name}", ok=(200, 202, 404))

    started = time.monotonic()
    stale = sorted({n["metadata"]["name"] for n in _list_managed_nodes(api)} - wanted.keys())
    log(
        f"applying {len(desired)} nodes from {topology_file.relative_to(REPO_ROOT)}"
        + (f" and deleting {len(stale)} stale ones" if stale else "")
    )
    with ThreadPoolExecutor(APPLY_PARALLELISM) as pool:
        list(pool.map(apply_node, desired))
        list(pool.map(delete_node, stale))
    log(f"written in {time.monotonic() - started:.1f}s; waiting until the nodes are Ready and schedulable")

    def all_ready() -> bool:
        nodes = {n["metadata"]["name"]: n for n in _list_managed_nodes(api)}
        ready = [
            n
            for n in wanted
            if n in nodes
            and _node_ready(nodes[n])
            and _same_resources(nodes[n]["status"].get("allocatable"), wanted[n]["status"]["allocatable"])
        ]
        return len(ready) == len(wanted)

    _wait_for(
        "nodes to become Ready and schedulable",
        all_ready,
        # kwok and the node lifecycle controller work through new nodes at a few dozen per second.
        READY_TIMEOUT + len(desired) / 10,
        f"Check {cluster_dir(name) / 'logs'}/kwok-controller.log and kube-controller-manager.log.",
    )
    log(f"{len(desired)} nodes Ready and schedulable {time.monotonic() - started:.1f}s after the first write")
    return len(desired)


# --------------------------------------------------------------------------------------------
# Engines: Karpenter (kwok provider) and Kueue, plain processes next to kwokctl's components

KARPENTER = "karpenter"
KUEUE = "kueue"
ENGINES = (KARPENTER, KUEUE)
# Read by the kwok Stages in testbed/kwok-stages.yaml (see testbed/README.md).
BRING_UP_ANNOTATION = "gpu-portal.example.com/simulated-bring-up-seconds"
LOAD_ANNOTATION = "gpu-portal.example.com/simulated-load-seconds"
# The portal labels every grant namespace with it; Kueue's webhooks and job management are limited
# to such namespaces, so the rest of the cluster never depends on Kueue being up.
GRANT_LABEL = "capacity.platform.example.com/grant"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
DEFAULT_NODE_BRINGUP_SECONDS = 45.0
KARPENTER_NAMESPACE = "karpenter"
KUEUE_NAMESPACE = "kueue-system"
KWOK_NODECLASS = "default"
# Kueue v0.17.0 loads a metrics certificate from this fixed path whenever its internal certificate
# management is off, even with metrics disabled (cmd/kueue/main.go).
KUEUE_METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
ENGINE_READY_TIMEOUT = 120.0
_ENGINE_PORTS = ("karpenterMetrics", "karpenterHealth", "kueueWebhook", "kueueHealth")
# Labels a NodePool template may not carry (Karpenter owns them or sets them from requirements), or
# that only make sense on one node.
_NODE_ONLY_LABELS = {
    MANAGED_BY_LABEL,
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/instance-type",
}
_CLUSTER_SCOPED_PATHS = {
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "Namespace": "/api/v1/namespaces",
    "NodePool": "/apis/karpenter.sh/v1/nodepools",
    "KWOKNodeClass": "/apis/karpenter.kwok.sh/v1alpha1/kwoknodeclasses",
    "MutatingWebhookConfiguration": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
}


def _engines_dir(name: str) -> Path:
    return cluster_dir(name) / "engines"


def _engine_state(name: str) -> Json:
    try:
        return json.loads((_engines_dir(name) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_engine_state(name: str, state: Json) -> None:
    path = _engines_dir(name) / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def _ensure_engine_state(name: str, node_bringup: float | None) -> Json:
    """The engines' ports (chosen once, like the other components') and the bring-up delay."""
    with _port_allocation() as allocate:
        state = _engine_state(name)
        ports = state.setdefault("ports", {})
        for key in _ENGINE_PORTS:
            ports.setdefault(key, allocate())
        if node_bringup is not None:
            state["nodeBringUpSeconds"] = node_bringup
        state.setdefault("nodeBringUpSeconds", DEFAULT_NODE_BRINGUP_SECONDS)
        _save_engine_state(name, state)
    return state


def node_bringup_seconds(name: str = DEFAULT_NAME) -> float | None:
    """The simulated bring-up delay of the cluster's elastic-pool nodes, as recorded by `up`."""
    value = _engine_state(name).get("nodeBringUpSeconds")
    return float(value) if value is not None else None


def engine_ports(name: str = DEFAULT_NAME) -> dict[str, int]:
    """karpenterMetrics, karpenterHealth, kueueWebhook, kueueHealth (all on 127.0.0.1)."""
    return {k: int(v) for k, v in _engine_state(name).get("ports", {}).items()}


# --- rendering (no cluster needed) ---------------------------------------------------------


def _pool_resource(pool: Json) -> tuple[str, int]:
    """The extended resource a node of the pool advertises and how many units it has."""
    gpus = int(pool["gpus"])
    mig = pool.get("mig")
    if mig:
        return f"nvidia.com/mig-{mig['profile']}", gpus * int(mig["slicesPerGpu"])
    return "nvidia.com/gpu", gpus


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}"


def render_instance_types(topology: Json) -> list[Json]:
    """Karpenter's kwok provider instance types (the format of its kwok/cloudprovider/
    instance_types.json) for the instance types of the elastic pools: their GPUs or MIG slices,
    an on-demand and a spot offering in every zone, priced from the accelerator per GPU-hour."""
    types: dict[str, Json] = {}
    try:
        for pool in topology.get("elasticPools", []):
            accel = topology["accelerators"][pool["accelerator"]]
            resource, units = _pool_resource(pool)
            resources = {
                "cpu": str(pool["cpu"]),
                "memory": str(pool["memory"]),
                "pods": str(topology.get("nodeDefaults", {}).get("pods", 110)),
                resource: str(units),
            }
            entry = types.setdefault(
                pool["instanceType"],
                {
                    "name": pool["instanceType"],
                    "architecture": "amd64",
                    "operatingSystems": ["linux"],
                    "resources": resources,
                    "offerings": [],
                },
            )
            if entry["resources"] != resources:
                raise TestbedError(
                    f"invalid topology: instance type {pool['instanceType']} has two different shapes"
                )
            offered = {tuple(r["values"][0] for r in o["Requirements"]) for o in entry["offerings"]}
            for zone in pool["zones"]:
                for capacity_type in ("on-demand", "spot"):
                    if (capacity_type, zone) in offered:
                        continue
                    price = float(accel["hourlyPrice"][capacity_type]) * int(pool["gpus"])
                    entry["offerings"].append(
                        {
                            "Price": round(price, 4),
                            "Available": True,
                            "Requirements": [
                                {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [capacity_type]},
                                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]},
                            ],
                        }
                    )
    except (KeyError, TypeError) as exc:
        raise TestbedError(f"invalid topology: elastic pool missing or malformed {exc}") from exc
    return list(types.values())


def render_nodepool(topology: Json, pool: Json, bringup_seconds: float) -> Json:
    """The Karpenter NodePool of one elastic pool. Its template gives nodes exactly the labels,
    taints and annotations a static node of the same shape has (rendered by the same code), plus
    the bring-up annotation the kwok Stages read."""
    try:
        zones = list(pool["zones"])
        node = _render_node(topology, pool, zones[0], "template")
        resource, _ = _pool_resource(pool)
        requirements = [
            ("node.kubernetes.io/instance-type", [pool["instanceType"]]),
            (CAPACITY_TYPE_LABEL, [pool["lifecycle"]]),
            ("topology.kubernetes.io/zone", zones),
            ("kubernetes.io/arch", ["amd64"]),
            ("kubernetes.io/os", ["linux"]),
        ]
        limit = str(pool["limits"]["gpus"])
    except (KeyError, TypeError, IndexError) as exc:
        raise TestbedError(f"invalid topology: elastic pool missing or malformed {exc}") from exc
    labels = {k: v for k, v in node["metadata"]["labels"].items() if k not in _NODE_ONLY_LABELS}
    annotations = {**node["metadata"]["annotations"], BRING_UP_ANNOTATION: _format_seconds(bringup_seconds)}
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {
            "name": pool["name"],
            "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, f"{topology['labelPrefix']}pool": pool["name"]},
        },
        "spec": {
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "nodeClassRef": {
                        "group": "karpenter.kwok.sh",
                        "kind": "KWOKNodeClass",
                        "name": KWOK_NODECLASS,
                    },
                    "requirements": [{"key": k, "operator": "In", "values": v} for k, v in requirements],
                    "taints": node["spec"]["taints"],
                    "expireAfter": "Never",
                },
            },
            "limits": {resource: limit},
            "disruption": {
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": str(pool.get("consolidateAfter", "5m")),
            },
        },
    }


def render_nodepools(topology: Json, bringup_seconds: float = DEFAULT_NODE_BRINGUP_SECONDS) -> list[Json]:
    return [render_nodepool(topology, pool, bringup_seconds) for pool in topology.get("elasticPools", [])]


def _kwok_nodeclass() -> Json:
    return {
        "apiVersion": "karpenter.kwok.sh/v1alpha1",
        "kind": "KWOKNodeClass",
        "metadata": {"name": KWOK_NODECLASS, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
        # Bring-up time is spent after registration (kwok Stages), where a real GPU node spends it.
        "spec": {},
    }


def _kueue_job_webhooks(manifests: Path, port: int, ca_pem: bytes) -> list[Json]:
    """Kueue's own webhook configurations, cut down to what the testbed enables (batch/job and
    Kueue's objects), pointed at the local process, limited to grant namespaces, failing closed."""
    ca_bundle = base64.b64encode(ca_pem).decode()
    configurations = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc or doc.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        hooks = []
        for hook in doc.get("webhooks", []):
            rules = hook.get("rules", [])
            if not rules or not all(
                set(r.get("apiGroups", [])) <= {"batch", "kueue.x-k8s.io"}
                and (r.get("apiGroups") != ["batch"] or r.get("resources") == ["jobs"])
                for r in rules
            ):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hooks.append(
                {
                    **hook,
                    # kb.io (kubebuilder's default) says nothing to a user whose Job is refused.
                    "name": hook["name"].replace(".kb.io", ".kueue.x-k8s.io"),
                    "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle},
                    # Ignored for cluster-scoped objects (ClusterQueue, ResourceFlavor, …).
                    "namespaceSelector": {"matchExpressions": [{"key": GRANT_LABEL, "operator": "Exists"}]},
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            )
        configurations.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": doc["kind"],
                "metadata": {
                    "name": f"kueue-{doc['metadata']['name']}",
                    "labels": {MANAGED_BY_LABEL: FIELD_MANAGER},
                },
                "webhooks": hooks,
            }
        )
    if not any(c["webhooks"] for c in configurations):
        raise TestbedError(f"no Kueue webhooks for batch/job found in {manifests}")
    return configurations


def _kueue_configuration(name: str, state: Json) -> Json:
    ports = state["ports"]
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {
            "host": "127.0.0.1",
            "port": int(ports["kueueWebhook"]),
            "certDir": str(_engines_dir(name) / "kueue" / "certs"),
        },
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueueHealth']}"},
        "metrics": {"bindAddress": "0"},
        # The visibility API is an aggregated API server, which the apiserver only reaches through
        # a Service; the testbed has no Service network.
        "featureGates": {"VisibilityOnDemand": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchExpressions": [{"key": GRANT_LABEL, "operator": "Exists"}]},
        "integrations": {"frameworks": ["batch/job"]},
        "clientConnection": {"qps": 50, "burst": 100},
    }


# --- processes -------------------------------------------------------------------------------


def _engine_pid_file(name: str, engine: str) -> Path:
    return _engines_dir(name) / f"{engine}.pid"


def _engine_pid(name: str, engine: str) -> int | None:
    """PID of the engine's live process; the pid file names the binary too, and the process's
    command line must still start with it (pids are recycled)."""
    try:
        pid_text, binary = _engine_pid_file(name, engine).read_text().split("\n")[:2]
        pid = int(pid_text)
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError):
        return None
    if _exited(pid) or argv0 != binary:
        return None
    return pid


def _engine_states(name: str) -> dict[str, bool]:
    if not _engine_state(name):
        return {}
    return {engine: _engine_pid(name, engine) is not None for engine in ENGINES}


def _stop_engine(name: str, engine: str, graceful: bool = False, timeout: float = 30.0) -> bool:
    pid = _engine_pid(name, engine)
    if pid is not None:
        os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not _wait_exit(pid, timeout if graceful else 10.0):
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 10.0)
    _engine_pid_file(name, engine).unlink(missing_ok=True)
    return pid is not None


def _spawn(name: str, engine: str, argv: list[str], binary: Path, env: dict[str, str]) -> None:
    logs = cluster_dir(name) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{engine}.log"
    if log_file.exists():
        log_file.replace(logs / f"{engine}.previous.log")
    with open(log_file, "wb") as out:
        # A session of its own: the engine outlives `up` (and a Ctrl-C in its terminal), like the
        # processes kwokctl starts.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=_engines_dir(name),
            start_new_session=True,
        )
    _engine_pid_file(name, engine).write_text(f"{proc.pid}\n{binary}\n")
    # Until the exec (or the last of unshare's and sh's), the process still runs another command
    # line, and _engine_pid would take it for dead.
    deadline = time.monotonic() + 10.0
    while proc.poll() is None and _engine_pid(name, engine) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _wait_engine_ready(name: str, engine: str, port: int, timeout: float) -> None:
    log_file = cluster_dir(name) / "logs" / f"{engine}.log"

    def ready() -> bool:
        if _engine_pid(name, engine) is None:
            tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file.exists() else []
            raise TestbedError(
                f"{engine} exited while starting; last lines of {log_file}:\n" + "\n".join(tail)
            )
        return _http_ok(port, "/readyz")

    _wait_for(f"{engine} to become ready", ready, timeout, f"Check {log_file}.")


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise TestbedError(
            "openssl is needed to make the Kueue webhook's certificate: apt-get install openssl"
        )
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise TestbedError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _kueue_certificates(name: str) -> Path:
    """A CA of the cluster's own and a serving certificate for 127.0.0.1 signed by it, made once;
    the apiserver trusts the CA through the webhook configurations' caBundle."""
    kueue_dir = _engines_dir(name) / "kueue"
    pki, certs = kueue_dir / "pki", kueue_dir / "certs"
    if (certs / "tls.crt").exists() and (certs / "tls.key").exists() and (pki / "ca.crt").exists():
        return pki / "ca.crt"
    pki.mkdir(parents=True, exist_ok=True)
    certs.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", "3650", "-subj", f"/CN=gpu-portal-testbed {name} Kueue webhook CA",
        "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
    )  # fmt: skip
    _openssl(
        "req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(certs / "tls.key"), "-out", str(pki / "tls.csr")
    )
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", str(pki / "tls.csr"), "-days", "3650",
        "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"), "-CAcreateserial",
        "-extfile", str(pki / "server.ext"), "-out", str(certs / "tls.crt"),
    )  # fmt: skip
    return pki / "ca.crt"


def _kueue_argv(name: str, bins: Binaries, config: Path) -> list[str]:
    """Kueue's command line, arranged so that its fixed metrics-certificate path exists.

    Metrics are not served (bindAddress "0"), so any certificate does. Preferred: a private mount
    namespace (an unprivileged user namespace; works for root and non-root alike) in which a
    read-only overlay adds kueue/metrics/certs to /etc for this process only. Otherwise a copy is
    written to /etc/kueue/metrics/certs when /etc is writable (root). Files already there are used
    as they are.
    """
    argv = [str(bins.kueue), f"--config={config}", f"--kubeconfig={kubeconfig_path(name)}"]
    if (KUEUE_METRICS_CERT_DIR / "tls.crt").exists() and (KUEUE_METRICS_CERT_DIR / "tls.key").exists():
        return argv
    certs = _engines_dir(name) / "kueue" / "certs"
    overlay = _engines_dir(name) / "kueue" / "etc-overlay"
    target = overlay / KUEUE_METRICS_CERT_DIR.relative_to("/etc")
    target.mkdir(parents=True, exist_ok=True)
    for file in ("tls.crt", "tls.key"):
        shutil.copyfile(certs / file, target / file)
    wrapper = [
        "unshare", "--map-root-user", "--mount", "sh", "-c",
        'mount -t overlay overlay -o "lowerdir=$0:/etc" /etc && exec "$@"', str(overlay),
    ]  # fmt: skip
    if shutil.which("unshare"):
        probe = subprocess.run(
            [*wrapper, "test", "-f", str(KUEUE_METRICS_CERT_DIR / "tls.crt")], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return [*wrapper, *argv]
        reason = probe.stderr.strip() or f"exit {probe.returncode}"
    else:
        reason = "unshare is not installed"
    if os.access("/etc", os.W_OK):
        log(f"no private mount namespace ({reason}); writing Kueue's metrics certificate")
        log(f"to {KUEUE_METRICS_CERT_DIR} (Kueue only checks that it is there)")
        KUEUE_METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        for file in ("tls.crt", "tls.key"):
            shutil.copyfile(certs / file, KUEUE_METRICS_CERT_DIR / file)
        return argv
    raise TestbedError(
        f"Kueue {bins.kueue_dir.name.removeprefix('kueue-')} insists on a certificate in "
        f"{KUEUE_METRICS_CERT_DIR} (even though its metrics are off), and neither a private mount "
        f"namespace ({reason}) nor writing there works for this user. Fix either: allow "
        "unprivileged user namespaces, or run once as root: "
        f"mkdir -p {KUEUE_METRICS_CERT_DIR} && cp {certs}/tls.* {KUEUE_METRICS_CERT_DIR}/"
    )


# --- applying and starting -----------------------------------------------------------------


def _apply_cluster_scoped(api: Api, obj: Json) -> Json:
    return api.apply(f"{_CLUSTER_SCOPED_PATHS[obj['kind']]}/{obj['metadata']['name']}", obj)


def _engine_crds(bins: Binaries) -> list[Json]:
    files = sorted((bins.karpenter_dir / "crds").glob("*.yaml")) + sorted(
        (bins.kueue_dir / "crds").glob("*.yaml")
    )
    if not files:
        raise TestbedError("the engines' CRDs are missing from the cache; run `make testbed-build`")
    # libyaml when PyYAML has it: Kueue's Workload CRD alone is 1.4 MB, 3 s for the pure-Python parser.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for f in files for doc in yaml.load_all(f.read_text(), Loader=loader) if doc]


def _apply_engine_objects(name: str, bins: Binaries, state: Json, topology_file: Path) -> bool:
    """Apply the engines' CRDs, namespaces, KWOKNodeClass and NodePools, and write Karpenter's
    instance types; returns whether those changed (Karpenter only reads them at start)."""
    api = Api.for_cluster(name)
    for namespace in (KARPENTER_NAMESPACE, KUEUE_NAMESPACE):
        _apply_cluster_scoped(
            api,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
            },
        )
    crds = _engine_crds(bins)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda crd: _apply_cluster_scoped(api, crd), crds))

    def established() -> bool:
        for crd in crds:
            live = api.get(f"{_CLUSTER_SCOPED_PATHS['CustomResourceDefinition']}/{crd['metadata']['name']}")
            conditions = (live.get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    _wait_for("the engines' CRDs to be established", established, READY_TIMEOUT)
    topology = load_topology(topology_file)
    _apply_cluster_scoped(api, _kwok_nodeclass())
    nodepools = render_nodepools(topology, float(state["nodeBringUpSeconds"]))
    for nodepool in nodepools:
        _apply_cluster_scoped(api, nodepool)
    selector = quote(f"{MANAGED_BY_LABEL}={FIELD_MANAGER}")
    live = api.get(f"{_CLUSTER_SCOPED_PATHS['NodePool']}?labelSelector={selector}")["items"]
    for stale in sorted({n["metadata"]["name"] for n in live} - {n["metadata"]["name"] for n in nodepools}):
        log(f"deleting NodePool {stale}: no longer in the topology")
        api.request("DELETE", f"{_CLUSTER_SCOPED_PATHS['NodePool']}/{stale}", ok=(200, 202, 404))
    log(
        f"{len(crds)} CRDs, a KWOKNodeClass and {len(nodepools)} NodePools applied "
        f"(node bring-up {_format_seconds(float(state['nodeBringUpSeconds']))}s)"
    )
    karpenter_dir = _engines_dir(name) / "karpenter"
    karpenter_dir.mkdir(parents=True, exist_ok=True)
    instance_types = karpenter_dir / "instance-types.json"
    text = json.dumps(render_instance_types(topology), indent=2)
    changed = instance_types.exists() and instance_types.read_text() != text
    instance_types.write_text(text)
    return changed


def _start_karpenter_process(name: str, bins: Binaries, state: Json) -> None:
    ports = state["ports"]
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig_path(name)),
        # Alone in the cluster it needs no election, and without one it keeps running while the
        # apiserver is away (stop_apiserver tests).
        "DISABLE_LEADER_ELECTION": "true",
        # Karpenter binds these on all interfaces (it takes a port, not an address).
        "METRICS_PORT": str(ports["karpenterMetrics"]),
        "HEALTH_PROBE_PORT": str(ports["karpenterHealth"]),
        "SYSTEM_NAMESPACE": KARPENTER_NAMESPACE,
        "INSTANCE_TYPES_FILE_PATH": str(_engines_dir(name) / "karpenter" / "instance-types.json"),
        "LOG_LEVEL": "info",
    }
    _spawn(name, KARPENTER, [str(bins.karpenter)], bins.karpenter, env)


def _start_kueue_process(name: str, bins: Binaries, state: Json) -> None:
    kueue_dir = _engines_dir(name) / "kueue"
    kueue_dir.mkdir(parents=True, exist_ok=True)
    _kueue_certificates(name)
    config = kueue_dir / "config.yaml"
    config.write_text(yaml.safe_dump(_kueue_configuration(name, state), sort_keys=False))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path(name))}
    _spawn(name, KUEUE, _kueue_argv(name, bins, config), bins.kueue, env)


def _apply_kueue_webhooks(name: str, bins: Binaries, state: Json) -> None:
    api = Api.for_cluster(name)
    ca_pem = (_engines_dir(name) / "kueue" / "pki" / "ca.crt").read_bytes()
    manifests = bins.kueue_dir / "webhook" / "manifests.yaml"
    for configuration in _kueue_job_webhooks(manifests, int(state["ports"]["kueueWebhook"]), ca_pem):
        _apply_cluster_scoped(api, configuration)


def _start_engines(
    name: str,
    bins: Binaries,
    node_bringup: float | None = None,
    topology_file: Path = TOPOLOGY_FILE,
    only: Iterable[str] = ENGINES,
    timeout: float = ENGINE_READY_TIMEOUT,
    refresh: bool = True,
) -> None:
    """Apply what the engines need (unless `refresh` is off and it was applied before) and start
    those of `only` that are not running; idempotent."""
    started = time.monotonic()
    state = _ensure_engine_state(name, node_bringup)
    applied = refresh or not (_engines_dir(name) / "karpenter" / "instance-types.json").exists()
    changed = applied and _apply_engine_objects(name, bins, state, topology_file)
    engines = list(only)
    if changed and _stop_engine(name, KARPENTER, graceful=True):
        log("the instance types changed: restarting karpenter")
        engines += [KARPENTER] if KARPENTER not in engines else []
    waiting = []
    for engine in engines:
        if _engine_pid(name, engine) is not None:
            continue
        log(f"starting {engine} (log in {cluster_dir(name) / 'logs' / (engine + '.log')})")
        (_start_karpenter_process if engine == KARPENTER else _start_kueue_process)(name, bins, state)
        waiting.append(engine)
    for engine in waiting:
        port = state["ports"]["karpenterHealth" if engine == KARPENTER else "kueueHealth"]
        _wait_engine_ready(name, engine, int(port), timeout)
    # After Kueue answers, so that a Job created during its start is not refused for nothing.
    _apply_kueue_webhooks(name, bins, state)
    if waiting:
        log(f"{' and '.join(waiting)} ready after {time.monotonic() - started:.1f}s")


def stop_karpenter(name: str = DEFAULT_NAME, graceful: bool = False) -> None:
    """Stop Karpenter (SIGKILL, like a crash; SIGTERM with `graceful`). Its NodePools, NodeClaims
    and nodes stay; nothing provisions or consolidates until start_karpenter()."""
    if not _stop_engine(name, KARPENTER, graceful):
        log(f"karpenter of {name!r} was not running")
    log(f"karpenter of {name!r} stopped")


def start_karpenter(name: str = DEFAULT_NAME, timeout: float = ENGINE_READY_TIMEOUT) -> None:
    """Start Karpenter again (same ports, instance types and NodePools) and wait until ready."""
    _start_engines(name, binaries(), only=(KARPENTER,), timeout=timeout, refresh=False)


def stop_kueue(name: str = DEFAULT_NAME, graceful: bool = False) -> None:
    """Stop Kueue. Its webhooks stay registered and fail closed: creating a Job in a grant
    namespace is refused until start_kueue()."""
    if not _stop_engine(name, KUEUE, graceful):
        log(f"kueue of {name!r} was not running")
    log(f"kueue of {name!r} stopped")


def start_kueue(name: str = DEFAULT_NAME, timeout: float = ENGINE_READY_TIMEOUT) -> None:
    """Start Kueue again (same port and certificate) and wait until its webhooks answer."""
    _start_engines(name, binaries(), only=(KUEUE,), timeout=timeout, refresh=False)


# --------------------------------------------------------------------------------------------
# Cluster lifecycle


def _write_kubeconfig(name: str, port: int) -> Path:
    pki = cluster_dir(name) / "pki"

    def b64(file: str) -> str:
        return base64.b64encode((pki / file).read_bytes()).decode()

    # Certificates are inlined so the file keeps working when copied elsewhere (e.g. into a
    # container or a CI artifact).
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": f"https://127.0.0.1:{port}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": f"{name}-admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
    }
    path = kubeconfig_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 from the start: the file holds the cluster-admin key.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Scale:
    """Creation options for clusters of thousands of nodes (the collector benchmark's 5,000),
    where kwok-controller alone otherwise keeps a core busy on this kind of machine.

    `heartbeat_factor` is kwokctl's: node lease duration 40 s x factor (kwok renews each lease
    every quarter of it), and the controller-manager's node monitor period and grace period scale
    with it, so nodes stay Ready. The default factor 5 renews 5,000 leases every 50 s (100 writes/s);
    30 renews them every 5 min. The cost: a node whose kwok stops is noticed only after the grace
    period (20 min at 30), so tests that stop kwok keep the default. `kwok_log_level` WARN drops
    kwok's INFO line for every lease, node and pod it writes (tens of MB a quarter hour)."""

    heartbeat_factor: float | None = None
    kwok_log_level: str | None = None

    def args(self) -> list[str]:
        out = []
        if self.heartbeat_factor is not None:
            out.append(f"--heartbeat-factor={self.heartbeat_factor:g}")
        if self.kwok_log_level is not None:
            out.append(f"--extra-args=kwok-controller=v={self.kwok_log_level}")
        return out


LARGE = Scale(heartbeat_factor=30, kwok_log_level="WARN")


def _create(bins: Binaries, name: str, port: int | None, scale: Scale | None = None) -> None:
    args = [
        "create",
        "cluster",
        "--runtime=binary",
        # Keep ~/.kube/config untouched; the testbed writes its own kubeconfig.
        "--kubeconfig=",
        f"--config={STAGES_FILE}",
        "--config=-",
        "--kube-authorization=true",
        "--kube-admission=true",
        f"--kube-apiserver-binary={bins.kube_bin / 'kube-apiserver'}",
        f"--kube-controller-manager-binary={bins.kube_bin / 'kube-controller-manager'}",
        f"--kube-scheduler-binary={bins.kube_bin / 'kube-scheduler'}",
        f"--etcd-binary={bins.etcd_bin / 'etcd'}",
        f"--kwok-controller-binary={bins.kwok_bin / 'kwok'}",
        # With leader election, controller-manager and scheduler exit once the apiserver has been
        # gone for ~10s, which would break "stop the apiserver, start it again" tests. Alone in
        # the cluster they need no election.
        "--extra-args=kube-controller-manager=leader-elect=false",
        "--extra-args=kube-scheduler=leader-elect=false",
        # Client-side rate limits (20 and 50 requests/s by default) are sized for real clusters;
        # with 1000+ simulated nodes the controller-manager would need minutes to clear the
        # not-ready taints of new nodes. The apiserver keeps its own flow control.
        *(
            f"--extra-args={c}={k}={v}"
            for c in ("kube-controller-manager", "kube-scheduler")
            for k, v in (("kube-api-qps", 500), ("kube-api-burst", 1000))
        ),
        "--timeout=5m",
        *(scale.args() if scale else []),
    ]
    with _port_allocation() as allocate:
        options = {key: allocate(port if key == "kubeApiserverPort" else None) for key in _PORT_OPTIONS}
        ports = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": options,
        }
        try:
            _kwokctl(bins, name, *args, stdin=json.dumps(ports))
        except TestbedError:
            _teardown(name)
            raise


def _stages_digest() -> str:
    return hashlib.sha256(STAGES_FILE.read_bytes()).hexdigest()


def _sync_stages(name: str) -> bool:
    """Give a cluster made with another testbed/kwok-stages.yaml the current one.

    kwokctl keeps the Stages it was created with in kwok.yaml, which kwok-controller reads at
    start; so the Stage documents there are replaced and kwok-controller is stopped (`up` starts
    it again). The digest of the file last applied is kept next to kwok.yaml.
    """
    marker = cluster_dir(name) / "stages.sha256"
    digest = _stages_digest()
    if marker.exists() and marker.read_text().strip() == digest:
        return False
    config = cluster_dir(name) / "kwok.yaml"
    docs = [d for d in yaml.safe_load_all(config.read_text()) if d and d.get("kind") != "Stage"]
    stages = [d for d in yaml.safe_load_all(STAGES_FILE.read_text()) if d]
    tmp = config.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all([*docs, *stages], sort_keys=False))
    tmp.replace(config)
    log(f"{STAGES_FILE.name} changed since cluster {name!r} was made: restarting kwok-controller")
    marker.write_text(digest + "\n")
    return True


def _release_node_leases(api: Api) -> None:
    """Delete the node Leases a previous kwok-controller held. Each kwok process has an identity
    of its own and leaves alone nodes whose lease another holds until it expires (200 s), so a
    restarted kwok would not run their pods for minutes."""
    api.request("DELETE", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", ok=(200, 202))


def _start_stopped(bins: Binaries, name: str) -> None:
    stopped = [c for c, running in _component_states(name).items() if not running]
    log(f"cluster {name!r}: starting {', '.join(stopped) or 'nothing, all components run'}")
    logs = cluster_dir(name) / "logs"
    for component in stopped:
        # kwokctl trusts any pid file whose pid answers signal 0, as a zombie or recycled pid does.
        _pid_file(name, component).unlink(missing_ok=True)
        # kwokctl truncates the log on start; keep the one that may explain why it stopped.
        if (logs / f"{component}.log").exists():
            (logs / f"{component}.log").replace(logs / f"{component}.previous.log")
    _kwokctl(bins, name, "start", "cluster", "--timeout=5m")


def up(
    name: str = DEFAULT_NAME,
    port: int | None = None,
    extra_nodes: int = 0,
    node_bringup_seconds: float | None = None,
    scale: Scale | None = None,
    engines: bool = True,
) -> Path:
    """Start (or create) the cluster and its engines and apply the topology; returns the
    kubeconfig path.

    `scale` applies when the cluster is created (see Scale). Without `engines`, Karpenter and Kueue
    are not started (and stopped if they run), though their CRDs and NodePools are applied as
    usual: a benchmark of thousands of nodes and tens of thousands of pods that uses neither
    saves them watching every pod.

    Idempotent: on a running cluster it only re-applies the topology (nodes, NodePools). `port`
    pins the apiserver port when the cluster is created (default: a free port chosen by kwokctl).
    `node_bringup_seconds` is the simulated bring-up delay of elastic-pool nodes; it is recorded
    in the cluster's directory and kept by later calls that do not give it (default 45).
    """
    if extra_nodes < 0:
        raise TestbedError("--extra-nodes must be >= 0")
    if node_bringup_seconds is not None and not 0 <= node_bringup_seconds <= 3600:
        raise TestbedError("--node-bringup-seconds must be between 0 and 3600")
    started = time.monotonic()
    bins = binaries()
    states = _component_states(name)
    if states and port is not None and port != (current := Api.for_cluster(name).port):
        raise TestbedError(f"cluster {name!r} already uses port {current}; run `down` first to change it")
    if not states:
        log(f"creating cluster {name!r} (kwokctl, binary runtime, workdir {cluster_dir(name)})")
        _create(bins, name, port, scale)
        (cluster_dir(name) / "stages.sha256").write_text(_stages_digest() + "\n")
    kwok_was_running = states.get("kwok-controller", False)
    if states and not all(states.values()):
        _start_stopped(bins, name)
    elif states:
        log(f"cluster {name!r} is running; re-applying the topology")
    api = Api.for_cluster(name)
    kubeconfig = _write_kubeconfig(name, api.port)
    _wait_for(
        "the apiserver to become ready",
        api.ready,
        READY_TIMEOUT,
        f"Check {cluster_dir(name) / 'logs' / 'kube-apiserver.log'}.",
    )
    log(f"apiserver ready on https://127.0.0.1:{api.port}")

    def default_service_account() -> bool:
        try:
            api.get("/api/v1/namespaces/default/serviceaccounts/default")
        except ApiError:
            return False
        return True

    # Pod creation is refused until the controller-manager has created the namespace's service
    # account, so a cluster is only usable after that.
    _wait_for(
        "the controller-manager to create the default service account",
        default_service_account,
        READY_TIMEOUT,
        f"Check {cluster_dir(name) / 'logs' / 'kube-controller-manager.log'}.",
    )
    if states and (_sync_stages(name) or not kwok_was_running):
        # Restart kwok-controller on a clean slate (stages and leases), now that the apiserver is up.
        _stop_component(name, "kwok-controller")
        _release_node_leases(api)
    # kwok-controller gives up if the apiserver takes more than ~30s to answer, which a busy
    # machine can cause; it starts fine once the apiserver is there.
    if not all(_component_states(name).values()):
        _start_stopped(bins, name)
    apply_topology(name, extra_nodes)
    if engines:
        _start_engines(name, bins, node_bringup_seconds)
    else:
        for engine in ENGINES:
            if _stop_engine(name, engine, graceful=True):
                log(f"stopped {engine} (not wanted)")
        _apply_engine_objects(name, bins, _ensure_engine_state(name, node_bringup_seconds), TOPOLOGY_FILE)
    log(f"cluster {name!r} is up after {time.monotonic() - started:.1f}s: export KUBECONFIG={kubeconfig}")
    return kubeconfig


def _teardown(name: str) -> None:
    for engine in ENGINES:
        if _stop_engine(name, engine):
            log(f"stopped {engine}")
    pids = cluster_dir(name) / "pids"
    # kwokctl may run optional extras besides the known components; stop those first.
    extras = sorted({p.stem for p in pids.glob("*.pid")} - set(COMPONENTS)) if pids.exists() else []
    for component in [*extras, *reversed(COMPONENTS)]:
        if _stop_component(name, component):
            log(f"stopped {component}")
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


def down(name: str = DEFAULT_NAME) -> None:
    """Stop every process of the cluster and delete its state and kubeconfig; a no-op when the
    cluster does not exist."""
    if not cluster_dir(name).exists():
        log(f"cluster {name!r} does not exist; nothing to stop")
    else:
        log(f"stopping cluster {name!r}")
        _teardown(name)
    kubeconfig = kubeconfig_path(name)
    kubeconfig.unlink(missing_ok=True)
    if name != DEFAULT_NAME and kubeconfig.parent.exists() and not any(kubeconfig.parent.iterdir()):
        kubeconfig.parent.rmdir()
    log(f"cluster {name!r} is down")


def stop_apiserver(name: str = DEFAULT_NAME, graceful: bool = False) -> None:
    """Stop only the kube-apiserver; etcd, the controllers and kwok keep running and reconnect
    once start_apiserver() brings it back.

    The default SIGKILL mimics a crash and is immediate. With `graceful`, SIGTERM closes the port
    at once, but the process then drains open watches for up to 60s before it exits.
    """
    api = Api.for_cluster(name)
    if not _stop_component(name, "kube-apiserver", graceful):
        log(f"kube-apiserver of {name!r} was not running")
    _wait_for("the apiserver port to close", lambda: _port_free(api.port), 30.0)
    log(f"kube-apiserver of {name!r} stopped")


def start_apiserver(name: str = DEFAULT_NAME, timeout: float = READY_TIMEOUT) -> None:
    """Start the kube-apiserver again (same port, certificates and etcd) and wait until ready.
    Any other component that is not running is started too, engines included."""
    api = Api.for_cluster(name)
    bins = binaries()
    _start_stopped(bins, name)
    _wait_for(
        "the apiserver to become ready",
        api.ready,
        timeout,
        f"Check {cluster_dir(name) / 'logs' / 'kube-apiserver.log'}.",
    )
    log(f"kube-apiserver of {name!r} ready on https://127.0.0.1:{api.port}")
    if not all(_engine_states(name).values()):
        _start_engines(name, bins)


@dataclass
class ClusterStatus:
    name: str
    components: dict[str, bool] = field(default_factory=dict)
    kubeconfig: Path | None = None
    server: str | None = None
    apiserver_ready: bool = False
    # pool -> (Ready nodes, all nodes)
    pools: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Karpenter and Kueue; empty for a cluster made before the testbed had engines.
    engines: dict[str, bool] = field(default_factory=dict)
    # elastic pool -> (Ready nodes, all nodes, GPU limit as "<quantity> <resource>")
    elastic_pools: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    node_bringup_seconds: float | None = None
    engine_ports: dict[str, int] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.components)

    @property
    def components_running(self) -> bool:
        """kwokctl's components (control plane and kwok) all run, engines aside."""
        return self.exists and all(self.components.values()) and self.apiserver_ready

    @property
    def running(self) -> bool:
        return self.components_running and bool(self.engines) and all(self.engines.values())


def status(name: str = DEFAULT_NAME) -> ClusterStatus:
    result = ClusterStatus(name, components=_component_states(name))
    if not result.exists:
        return result
    result.engines = _engine_states(name)
    result.node_bringup_seconds = node_bringup_seconds(name)
    result.engine_ports = engine_ports(name)
    api = Api.for_cluster(name)
    result.server = f"https://127.0.0.1:{api.port}"
    if kubeconfig_path(name).exists():
        result.kubeconfig = kubeconfig_path(name)
    result.apiserver_ready = api.ready()
    if result.apiserver_ready:
        prefix = load_topology()["labelPrefix"]
        for node in _list_managed_nodes(api):
            pool = node["metadata"]["labels"].get(f"{prefix}pool", "?")
            ready, total = result.pools.get(pool, (0, 0))
            result.pools[pool] = (ready + _node_ready(node), total + 1)
        try:
            nodepools = api.get(f"{_CLUSTER_SCOPED_PATHS['NodePool']}")["items"]
        except ApiError:
            nodepools = []  # CRDs not applied yet
        for nodepool in nodepools:
            limit = ", ".join(f"{v} {k}" for k, v in nodepool["spec"].get("limits", {}).items())
            result.elastic_pools[nodepool["metadata"]["name"]] = (0, 0, limit)
        for node in api.get(f"/api/v1/nodes?labelSelector={quote(NODEPOOL_LABEL)}")["items"]:
            pool = node["metadata"]["labels"][NODEPOOL_LABEL]
            ready, total, limit = result.elastic_pools.get(pool, (0, 0, "?"))
            result.elastic_pools[pool] = (ready + _node_ready(node), total + 1, limit)
    return result


# --------------------------------------------------------------------------------------------
# CLI


def _print_status(st: ClusterStatus) -> None:
    if not st.exists:
        print(f"cluster {st.name!r}: not created (run `make testbed-up`)")
        return
    print(f"cluster {st.name!r}: {'running' if st.running else 'NOT fully running'}")
    print(f"  server:     {st.server} ({'ready' if st.apiserver_ready else 'not answering'})")
    print(f"  kubeconfig: {st.kubeconfig or '(missing; run up again)'}")
    print(f"  workdir:    {cluster_dir(st.name)}")
    for component, running in st.components.items():
        print(f"  {component:<24} {'running' if running else 'stopped'}")
    for engine in ENGINES:
        if engine in st.engines:
            print(f"  {engine:<24} {'running' if st.engines[engine] else 'stopped'}")
        else:
            print(f"  {engine:<24} not set up (run up again)")
    if st.engine_ports:
        print("  engine ports:", ", ".join(f"{k} {v}" for k, v in sorted(st.engine_ports.items())))
    if st.node_bringup_seconds is not None:
        print(f"  node bring-up: {_format_seconds(st.node_bringup_seconds)}s (elastic-pool nodes)")
    for pool, (ready, total) in sorted(st.pools.items()):
        print(f"  pool {pool:<24} {ready}/{total} nodes Ready")
    for pool, (ready, total, limit) in sorted(st.elastic_pools.items()):
        print(f"  elastic pool {pool:<16} {ready}/{total} nodes Ready (limit {limit})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--name", default=DEFAULT_NAME, help="cluster name (default %(default)s)")
    parser.add_argument("--extra-nodes", type=int, default=0, help="extra benchmark GPU nodes (up only)")
    parser.add_argument("--port", type=int, help="apiserver port when creating (default: a free port)")
    parser.add_argument(
        "--node-bringup-seconds",
        type=float,
        help=f"simulated bring-up delay of elastic-pool nodes (up only; kept once set; default "
        f"{DEFAULT_NODE_BRINGUP_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up(args.name, args.port, args.extra_nodes, args.node_bringup_seconds))
        elif args.command == "down":
            down(args.name)
        else:
            st = status(args.name)
            _print_status(st)
            return 0 if st.running else 1
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
