"""The utilisation collector at scale: `manage.py collect_utilisation` as a subprocess against a testbed
with N extra GPU nodes and 10 pods per node.

Pods are created straight onto the bench nodes (spec.nodeName set, so the scheduler is skipped and
kwok marks them Running), each requesting one GPU; with 10 pods on an 8-GPU node some nodes are
over-requested, which kwok does not refuse and the figures count as they are. Figures:
- first complete view: from starting the collector process (Python and Django start-up included) until
  the bench pool's published `gpus_requested` equals the number of pods and the cluster is `live`;
- keeping up: create/delete churn (two creates per delete, so the expected count moves) at rising target
  rates; after each step, the lag until the published figures equal the truth. The pod watch events
  of each step are counted on a watch of our own (the stream the collector consumes); a step is kept up
  with when the figures caught up within LAG_OK seconds, and the figure is the highest event rate of
  such a step (the load generator, sharing the cores, may fall short of its target rate);
- resident memory: VmRSS and VmHWM of the collector process;
- fragment latency: sequential HTMX GETs of the dashboard's live overview (pool cards) and of the bench
  pool's live region (node grid) from gunicorn on the bench database, while pods churn, sent by a
  process of their own (as a browser's are). Each full
  render is followed at once by the poll a browser sends next, with the render's ETag as If-None-Match:
  answered 304 while the figures are unchanged (the "not modified" path, its own p50/p95), 200 when the
  collector wrote in between (counted as a full render).
"""

import http.client
import itertools
import multiprocessing
import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    Series,
    bench_env,
    django_setup,
    log,
    percentile,
    process,
    reset_database,
    testbed_cluster,
    testbed_module,
    wait_for,
)

CLUSTER_NAME = "gpu-portal-bench"
NAMESPACE = "bench-pods"
PODS_PER_NODE = 10
# With the testbed's engines off, 16 keep-alive connections create about 200 pods/s here (8 with
# Karpenter and Kueue watching every pod made 90/s): 50,000 pods in about 4 min.
CREATE_THREADS = 16
LAG_OK = 3.0
STEP_SECONDS = 10.0
WEB_PORT = 18765
PREFIX = "accelerator.platform.example.com"


RESOURCE_VERSION = re.compile(rb'"resourceVersion":"(\d+)"')
# The collector's own account of its lists (pools.kube.watch), in its log.
LISTED = re.compile(r"local/(nodes|pods): listed \d+ objects (?:in \d+ page\(s\)|by streaming), ([\d.]+)s")


def _pod(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench"}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "c",
                    "image": "bench:none",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


class Pods:
    """Creates and deletes bench pods through the testbed's keep-alive API client."""

    def __init__(self, n_nodes: int) -> None:
        self.api = testbed_module().Api.for_cluster(CLUSTER_NAME)
        self.n_nodes = n_nodes
        self.counter = itertools.count()
        self.live: deque[str] = deque()
        self.lock = threading.Lock()

    def namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        self.api.apply(f"/api/v1/namespaces/{NAMESPACE}", body)

    def create(self) -> None:
        i = next(self.counter)
        name = f"p{i:06d}"
        self.api.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", _pod(name, f"bench-h100-{i % self.n_nodes:05d}")
        )
        with self.lock:
            self.live.append(name)

    def delete_oldest(self) -> None:
        with self.lock:
            if not self.live:
                return
            name = self.live.popleft()
        self.api.request(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}", {"gracePeriodSeconds": 0}, ok=(200, 202)
        )

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.live)

    def pending(self) -> bool:
        """Whether any bench pod is still Pending: created bound to its node, not yet marked Running
        by kwok, which works through tens of thousands of new pods at a few hundred per second."""
        page = self.api.get(
            f"/api/v1/namespaces/{NAMESPACE}/pods?fieldSelector=status.phase%3DPending&limit=1"
        )
        return bool(page.get("items"))

    def fill(self, total: int) -> float:
        """Create pods until `total` exist; returns pods created per second."""
        missing = total - self.count
        start = time.perf_counter()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(lambda _: self.create(), range(missing)))
        return missing / (time.perf_counter() - start) if missing else 0.0


class EventCounter(threading.Thread):
    """Counts the pod watch events of the bench namespace, the same stream the collector consumes.

    The apiserver closes a watch whose reader falls behind (and every watch at its timeout); the counter
    then watches again from the last resourceVersion it saw, so a step is never counted as silent
    because its watch had ended. `reconnects` says how often that happened."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.api = testbed_module().Api.for_cluster(CLUSTER_NAME)
        self.events = 0
        self.reconnects = 0
        self.stop = threading.Event()

    def _list_version(self) -> str:
        return self.api.get(f"/api/v1/namespaces/{NAMESPACE}/pods?limit=1")["metadata"]["resourceVersion"]

    def run(self) -> None:
        version = self._list_version()
        while not self.stop.is_set():
            conn = self.api._connection()
            try:
                path = (
                    f"/api/v1/namespaces/{NAMESPACE}/pods"
                    f"?watch=1&resourceVersion={version}&timeoutSeconds=600"
                )
                conn.request("GET", path, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                while not self.stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    if line.startswith(b'{"type":"ERROR"'):  # resourceVersion too old: start from now
                        version = self._list_version()
                        break
                    # The object's own resourceVersion is the first one in the line (metadata comes first).
                    if (m := RESOURCE_VERSION.search(line)) is not None:
                        version = m.group(1).decode()
                    self.events += 1
            except (OSError, http.client.HTTPException):
                pass  # a quiet stream past the socket timeout, or a cut connection: watch again
            finally:
                conn.close()
            if not self.stop.is_set():
                self.reconnects += 1


def _published(pool_id: int) -> tuple[str | None, int | None]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT cu.state, pu.gpus_requested FROM pools_clusterutilisation cu "
            "JOIN pools_nodepool np ON np.cluster_id = cu.cluster_id "
            "LEFT JOIN pools_poolutilisation pu ON pu.pool_id = np.id WHERE np.id = %s",
            [pool_id],
        )
        row = cur.fetchone()
    return (row[0], row[1]) if row else (None, None)


def _rss(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _prepare(kubeconfig: str) -> int:
    from django.core.management import call_command

    from pools.models import Accelerator, Cluster, NodePool, PoolClass

    reset_database()
    call_command("seed_demo", kubeconfig=Path(kubeconfig), verbosity=0)
    cluster = Cluster.objects.get(name="local")
    pool = NodePool.objects.create(
        cluster=cluster,
        name="bench-h100",
        pool_class=PoolClass.BATCH,
        accelerator=Accelerator.objects.get(slug="h100-80gb"),
        node_selector={f"{PREFIX}/pool": "bench-h100"},
        taint_key=f"{PREFIX}/pool",
        taint_value="bench-h100",
        taint_effect="NoSchedule",
        priority_class_name="gpu-batch-inference",
        zones=["zone-a", "zone-b"],
        capacity_gpus=8,
    )
    return pool.pk


def _collector(workdir: str, tag: str) -> Any:
    return process(
        [sys.executable, "manage.py", "collect_utilisation", "--cluster", "local", "--interval", "15"],
        os.path.join(workdir, f"collector-{tag}.log"),
    )


def _forget_figures() -> None:
    """Drop what an earlier collector published, so that only this one's figures can end the wait."""
    from pools.models import ClusterUtilisation, PoolUtilisation

    PoolUtilisation.objects.all().delete()
    ClusterUtilisation.objects.all().delete()


# The testbed's own processes, by the name the kernel keeps (15 characters).
TESTBED_PROCESSES = ("etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok-controller")
SETTLED_CORES = 0.3
SETTLE_WINDOW = 5.0
SETTLE_TIMEOUT = 300.0


# The diagnostic churn (see run): the testbed's threads at this nice value, at these rates.
NICED = 10
NICED_RATES = (200, 400)


def _processes() -> list[tuple[int, str, list[str]]]:
    """Each process's pid, name (as the kernel keeps it) and the fields of its /proc stat after it."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended
        name = text[text.index("(") + 1 : text.rindex(")")]
        found.append((int(stat.parent.name), name, text[text.rindex(")") + 2 :].split()))
    return found


def _testbed_stats() -> list[tuple[int, list[str]]]:
    """Each testbed process's pid and the fields of its /proc stat after its name."""
    return [(pid, fields) for pid, name, fields in _processes() if name in TESTBED_PROCESSES]


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _role(pid: int, name: str) -> str:
    """What a process is to the churn's figures: the work sharing the cores with the polls."""
    if name in TESTBED_PROCESSES:
        return "testbed"
    if name.startswith("postgres"):
        return "postgresql"
    if name.startswith("redis"):
        return "redis"
    if pid == os.getpid():
        return "bench (load generator, event counter)"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "other"
    if b"collect_utilisation" in cmdline:
        return "collector"
    if b"gunicorn" in cmdline:
        return "web server"
    if b"multiprocessing" in cmdline:
        return "poller"
    return "other"


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by the processes alive now, by their role."""
    used: dict[str, float] = {}
    for pid, name, fields in _processes():
        role = _role(pid, name)
        used[role] = used.get(role, 0.0) + _cpu_seconds(fields)
    return used


def _cores_between(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """The cores each role used on average between two _cpu_by_role() samples `seconds` apart."""
    return {role: max(0.0, (used - before.get(role, 0.0)) / seconds) for role, used in after.items()}


def _renice_testbed(nice: int) -> tuple[int, int]:
    """Sets every thread of the testbed's processes, and their scheduling groups, to `nice`; how many
    threads it set. A thread's nice value orders it only within its autogroup: with autogroups on (as
    here, /proc/sys/kernel/sched_autogroup_enabled) the scheduler first shares the cores fairly among
    sessions, and each testbed process runs in a session of its own, so the group's nice value
    (/proc/PID/autogroup) is what lowers its share against the web server's session. How many threads
    and how many processes' autogroups it set."""
    done, groups = 0, 0
    for pid, _ in _testbed_stats():
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            groups += 1
        except (ProcessLookupError, FileNotFoundError):
            pass  # the process ended, or the kernel has no autogroups: the threads' nice still counts
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                done += 1
            except (ProcessLookupError, FileNotFoundError):
                continue  # the thread ended
    return done, groups


def _testbed_cpu_seconds() -> float:
    return sum(_cpu_seconds(fields) for _, fields in _testbed_stats())


def _settle(what: str) -> dict[str, float]:
    """Waits until the testbed's processes use less than SETTLED_CORES over a window: after a bulk
    of pods is created (or a collector's first list) the apiserver, etcd and kwok stay busy for a
    while, and a figure measured then measures their aftermath on the shared cores, not the portal."""
    start = time.perf_counter()
    windows: list[float] = []
    while True:
        before = _testbed_cpu_seconds()
        time.sleep(SETTLE_WINDOW)
        windows.append((_testbed_cpu_seconds() - before) / SETTLE_WINDOW)
        if windows[-1] < SETTLED_CORES or time.perf_counter() - start > SETTLE_TIMEOUT:
            break
    waited = time.perf_counter() - start
    settled = windows[-1] < SETTLED_CORES
    log(
        "collector",
        f"{what}: testbed {'settled' if settled else 'NOT settled'} after {waited:.0f} s "
        f"(cores per {SETTLE_WINDOW:.0f} s window: {', '.join(f'{w:.2f}' for w in windows)})",
    )
    return {"settle_seconds": waited, "settled": float(settled), "testbed_cores": windows[-1]}


def _first_view(pool_id: int, pods: Pods, workdir: str, tag: str) -> dict[str, float]:
    expected = pods.count
    settle = _settle(f"before first view {tag}")
    _forget_figures()
    start = time.perf_counter()
    with _collector(workdir, tag) as proc:
        wait_for(
            "the collector's first complete view",
            lambda: _published(pool_id) == ("live", expected) or proc.poll() is not None,
            timeout=300,
            interval=0.05,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited; see {workdir}/collector-{tag}.log")
        seconds = time.perf_counter() - start
        time.sleep(2)
        memory = _rss(proc.pid)
    # Where the first view's time went: the node and pod lists as the collector timed them.
    log_text = Path(workdir, f"collector-{tag}.log").read_text(errors="replace")
    lists = {f"{kind}_list_seconds": float(s) for kind, s in LISTED.findall(log_text)}
    return {"seconds": seconds, **memory, **lists, **settle}


class FragmentPoller:
    """Sequential dashboard polls, like one browser tab per fragment, recording latencies."""

    def __init__(self, cookie: str, pool_id: int) -> None:
        self.cookie = cookie
        self.targets = {
            "overview": ("/utilisation/", "utilisation-live"),
            "pool": (f"/utilisation/pools/{pool_id}/", "pool-live"),
        }
        # "<key>" full renders, "<key>_304" polls answered not modified.
        self.samples: dict[str, list[float]] = {name: [] for k in self.targets for name in (k, f"{k}_304")}
        self.errors = 0
        self.conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=30)

    def _get(self, path: str, target: str, etag: str | None) -> tuple[int, str | None, float] | None:
        headers = {
            "Cookie": self.cookie,
            "HX-Request": "true",
            "HX-Target": target,
            "HX-Current-URL": f"http://127.0.0.1{path}",
        }
        if etag:
            headers["If-None-Match"] = etag
        start = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=30)
            return None
        return resp.status, resp.getheader("ETag"), (time.perf_counter() - start) * 1000

    def poll(self, stop: Any) -> None:
        while not stop.is_set():
            for key, (path, target) in self.targets.items():
                etag = None
                for conditional in (False, True):
                    got = self._get(path, target, etag)
                    if got is None or got[0] not in (200, 304) or (got[0] == 304 and not conditional):
                        self.errors += 1
                        break
                    status, etag, ms = got
                    self.samples[f"{key}_304" if status == 304 else key].append(ms)
            stop.wait(0.2)


def _poll_fragments(cookie: str, pool_id: int, stop: Any, results: Any) -> None:
    poller = FragmentPoller(cookie, pool_id)
    poller.poll(stop)
    results.put((poller.samples, poller.errors))


class Fragments:
    """The poller in a process of its own, as a browser is: in the bench's process its clock would also
    run while it waits for the interpreter lock behind the load generator's and event counter's threads."""

    def __init__(self, cookie: str, pool_id: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_poll_fragments, args=(cookie, pool_id, self._stop, self._results), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def finish(self) -> tuple[dict[str, list[float]], int]:
        """Stops the polls; their latencies and the number of failed polls."""
        self._stop.set()
        samples, errors = self._results.get(timeout=60)
        self._process.join(10)
        return samples, errors


def _session_cookie() -> str:
    from django.conf import settings
    from django.test import Client

    from portal.models import User

    client = Client()
    client.force_login(User.objects.get(username="admin"))
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def _churn(pool_id: int, pods: Pods, rates: list[int]) -> list[dict[str, Any]]:
    steps = []
    counter = EventCounter()
    counter.start()
    time.sleep(1)
    for rate in rates:
        ops = int(rate * STEP_SECONDS)
        events_before, reconnects_before = counter.events, counter.reconnects
        cpu_before = _cpu_by_role()
        start = time.perf_counter()
        done = 0
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            futures = []
            for i in range(ops):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(pods.delete_oldest if i % 3 == 2 else pods.create))
            for f in futures:
                f.result()
                done += 1
        elapsed = time.perf_counter() - start
        # Who had the cores while the polls waited (the step's writes, not the catching up after).
        cores = _cores_between(cpu_before, _cpu_by_role(), elapsed)
        events = counter.events - events_before
        expected = pods.count
        end = time.perf_counter()
        try:
            wait_for(
                "the figures to catch up",
                lambda: _published(pool_id)[1] == expected,  # noqa: B023 - called within the iteration
                timeout=60,
                interval=0.05,
            )
            lag = time.perf_counter() - end
        except TimeoutError:
            lag = float("inf")
        achieved = done / elapsed
        step = {
            "target_ops_per_s": rate,
            "achieved_ops_per_s": achieved,
            "watch_events_per_s": events / elapsed,
            "watch_reconnects": counter.reconnects - reconnects_before,
            "lag_seconds": lag,
            # The collector kept up with what was offered, whether or not the generator reached its target.
            "kept_up": lag <= LAG_OK,
            "cores": cores,
        }
        steps.append(step)
        log("collector", f"churn {step}")
    counter.stop.set()
    return steps


def run(
    sizes: tuple[int, ...] = (100, 1000),
    repeats: int = 3,
    rates: tuple[int, ...] = (50, 100, 200, 400),
    workdir: str = "var/bench",
    largest_repeats: int | None = None,
) -> dict[str, Any]:
    """`largest_repeats` caps the first-view repeats at the largest size, whose every collector
    start lists all its pods again (the other sizes keep `repeats`)."""
    django_setup()
    os.makedirs(workdir, exist_ok=True)
    tb = testbed_module()
    out: dict[str, Any] = {
        "pods_per_node": PODS_PER_NODE,
        "step_seconds": STEP_SECONDS,
        "lag_ok_seconds": LAG_OK,
        "web": (
            "gunicorn portal.wsgi, 3 sync workers, portal.settings.test with persistent database "
            "connections, bench database"
        ),
        "settle": {
            "cores": SETTLED_CORES,
            "window_seconds": SETTLE_WINDOW,
            "timeout_seconds": SETTLE_TIMEOUT,
        },
        "testbed": {
            "heartbeat_factor": tb.LARGE.heartbeat_factor,
            "kwok_log_level": tb.LARGE.kwok_log_level,
            "engines": False,
        },
        "sizes": {},
    }
    # Karpenter and Kueue off (the collector's watches of their objects still list and watch them):
    # at 50,000 pods they would be two more processes watching every pod on the same 2 cores.
    with testbed_cluster(CLUSTER_NAME, extra_nodes=sizes[0], scale=tb.LARGE, engines=False) as kubeconfig:
        pool_id = _prepare(kubeconfig)
        pods = Pods(sizes[0])
        pods.namespace()
        for n_nodes in sizes:
            started = time.perf_counter()
            tb.up(name=CLUSTER_NAME, extra_nodes=n_nodes, engines=False)
            nodes_seconds = time.perf_counter() - started
            # New pods spread over all nodes; those of the smaller size stay where they are.
            pods.n_nodes = n_nodes
            create_rate = pods.fill(n_nodes * PODS_PER_NODE)
            # Measured once kwok has marked every pod Running: before that its status writes are a
            # churn of their own, on the same cores, that the first view would be measured in.
            wait_for(
                "kwok to run every bench pod",
                lambda: not pods.pending(),
                timeout=120 + pods.count / 20,
                interval=2,
            )
            running_seconds = time.perf_counter() - started - nodes_seconds
            log(
                "collector",
                f"{n_nodes} nodes, {pods.count} pods ({create_rate:.0f} pods/s created; "
                f"nodes ready in {nodes_seconds:.0f} s, pods running {running_seconds:.0f} s later)",
            )
            first, rss, hwm, pod_list, settle = (
                Series(f"first view, {n_nodes} nodes", "s"),
                Series("RSS", "MiB"),
                Series("HWM", "MiB"),
                Series("pod list", "s"),
                Series("testbed settle wait", "s"),
            )
            runs = (
                repeats if n_nodes != max(sizes) or largest_repeats is None else min(repeats, largest_repeats)
            )
            unsettled = 0  # views measured although the testbed did not settle within SETTLE_TIMEOUT
            for r in range(runs):
                view = _first_view(pool_id, pods, workdir, f"{n_nodes}-{r}")
                unsettled += not view["settled"]
                first.values.append(view["seconds"])
                rss.values.append(view["VmRSS"])
                hwm.values.append(view["VmHWM"])
                settle.values.append(view["settle_seconds"])
                if "pods_list_seconds" in view:
                    pod_list.values.append(view["pods_list_seconds"])
                log("collector", f"{n_nodes} nodes: first view {view}")
            result: dict[str, Any] = {
                "pods": pods.count,
                "pod_create_per_s": create_rate,
                "nodes_ready_seconds": nodes_seconds,
                "pods_running_seconds": running_seconds,
                "first_view": first.summary(),
                "rss_mib": rss.summary(),
                "peak_rss_mib": hwm.summary(),
                "pod_list_seconds": pod_list.summary(),
                "settle_seconds": settle.summary(),
                "unsettled_views": unsettled,
            }
            web_args = [
                sys.executable, "-m", "gunicorn", "portal.wsgi:application",
                "--bind", f"127.0.0.1:{WEB_PORT}", "--workers", "3", "--log-level", "warning",
            ]  # fmt: skip
            with (
                _collector(workdir, f"{n_nodes}-churn") as proc,
                process(
                    web_args,
                    os.path.join(workdir, f"web-{n_nodes}.log"),
                    bench_env(PORTAL_DB_CONN_MAX_AGE="60"),
                ),
            ):
                wait_for("the collector", lambda: _published(pool_id) == ("live", pods.count), timeout=300)
                wait_for("gunicorn", _web_up, timeout=60)
                # The churn collector's own first list leaves the apiserver busy: steps start after it.
                result["settle_before_churn"] = _settle(f"{n_nodes} nodes, before the churn")
                fragments = Fragments(_session_cookie(), pool_id)
                fragments.start()
                steps = _churn(pool_id, pods, list(rates))
                samples, errors = fragments.finish()
                result["churn"] = steps
                result["sustained_ops_per_s"] = max(
                    (s["achieved_ops_per_s"] for s in steps if s["kept_up"]), default=0.0
                )
                result["sustained_events_per_s"] = max(
                    (s["watch_events_per_s"] for s in steps if s["kept_up"]), default=0.0
                )
                result["rss_after_churn_mib"] = _rss(proc.pid)
                result["fragments"] = {
                    k: {"requests": len(v), "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
                    for k, v in samples.items()
                }
                result["fragment_errors"] = errors
                # A diagnostic, not a target: the same polls while the testbed's processes run at a
                # lower priority, as if the cluster's control plane and kubelets ran on machines of
                # their own (as they do in production); the load generator keeps its priority.
                if os.geteuid() != 0:  # raising a priority back needs CAP_SYS_NICE
                    result["niced"] = {"skipped": "the bench does not run as root"}
                    log("collector", f"{n_nodes} nodes: {result}")
                    out["sizes"][n_nodes] = result
                    continue
                threads, groups = _renice_testbed(NICED)
                try:
                    fragments = Fragments(_session_cookie(), pool_id)
                    fragments.start()
                    niced_steps = _churn(pool_id, pods, list(NICED_RATES))
                    samples, errors = fragments.finish()
                finally:
                    _renice_testbed(0)
                result["niced"] = {
                    "nice": NICED,
                    "threads": threads,
                    "autogroups": groups,  # runs before this key set the threads' nice only
                    "churn": niced_steps,
                    "fragments": {
                        k: {"requests": len(v), "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
                        for k, v in samples.items()
                    },
                    "fragment_errors": errors,
                }
            log("collector", f"{n_nodes} nodes: {result}")
            out["sizes"][n_nodes] = result
    return out


def _web_up() -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=2)
        conn.request("GET", "/accounts/login/")
        return conn.getresponse().status < 500
    except OSError:
        return False


if __name__ == "__main__":
    import json

    print(json.dumps(run(sizes=(50,), repeats=1, rates=(50, 100)), indent=2, default=str))
