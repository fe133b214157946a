"""A small client of a cluster's Prometheus (HTTP API `/api/v1/query`) for what only the node agents
know: DCGM GPU utilisation and memory per pool, vLLM running sequences, queue time and tokens per
second per namespace, and from those the cost per generated token.

Joins (docs/utilisation.md, "Prometheus data source"):
- a pool's GPUs are the DCGM series whose node label (`Cluster.prometheus_node_label`, by default
  `Hostname`, which dcgm-exporter sets to the Kubernetes node name) names one of the pool's nodes
  as the collector last saw them;
- a namespace's vLLM series carry the `namespace` label that Prometheus' Kubernetes service
  discovery adds (PodMonitor/ServiceMonitor relabelling).

Every failure is a PrometheusError with a reason fit to show on a page: a page never fails because
Prometheus does not answer.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

TIMEOUT_SECONDS = 3.0
# The window of rate(): long enough to smooth bursts, short enough to follow a change of load.
RATE_WINDOW = "5m"
NAMESPACE_LABEL = "namespace"


class PrometheusError(Exception):
    """Prometheus could not answer; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrometheusUnreachable(PrometheusError):
    """Connection refused, timed out, DNS failure: nothing answered."""


class PrometheusBadResponse(PrometheusError):
    """Something answered, but not a successful Prometheus query result (HTTP error, bad JSON, a
    PromQL error)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float | None  # None for NaN (e.g. a queue time with no requests in the window)


@dataclass
class NamespaceServing:
    namespace: str
    gpus: int
    running: float | None = None
    queue_seconds: float | None = None
    tokens_per_second: float | None = None
    cost_per_token: Decimal | None = None

    @property
    def cost_per_million_tokens(self) -> Decimal | None:
        return None if self.cost_per_token is None else self.cost_per_token * 1_000_000


@dataclass
class PoolGpuFigures:
    gpus_reporting: int = 0
    utilisation_percent: float | None = None  # mean over the GPUs reporting
    memory_used_mib: float = 0.0
    nodes_reporting: int = 0


@dataclass
class PoolPrometheus:
    """What the pool page shows: either figures or why there are none."""

    gpu: PoolGpuFigures | None = None
    serving: list[NamespaceServing] = field(default_factory=list)
    unavailable: str = ""  # the reason, when Prometheus could not answer

    @property
    def memory_used_gib(self) -> float:
        return (self.gpu.memory_used_mib if self.gpu else 0.0) / 1024


class Client:
    def __init__(self, url: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise PrometheusBadResponse(f"{url!r} is not an http(s) URL")
        self.base = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str, *, at: datetime | None = None) -> list[Sample]:
        """An instant query; returns the vector's samples. Raises PrometheusError."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        request = urllib.request.Request(  # noqa: S310 (only http(s), checked above)
            f"{self.base}/api/v1/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422/503 with a JSON error body worth showing.
            raise PrometheusBadResponse(_error_of(exc.read(), f"HTTP {exc.code}")) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusUnreachable(f"cannot reach {self.base}: {reason}") from exc
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise PrometheusBadResponse(f"{self.base} did not answer with JSON") from exc
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise PrometheusBadResponse(_error_of(body, "query failed"))
        data = payload.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusBadResponse(f"expected a vector, got {data.get('resultType')!r}")
        return [
            Sample(labels=item.get("metric", {}), value=_number(item.get("value", [0, "NaN"])[1]))
            for item in data.get("result", [])
        ]


def _error_of(body: bytes, fallback: str) -> str:
    try:
        payload = json.loads(body)
        return f"{payload.get('errorType', 'error')}: {payload.get('error', fallback)}"
    except (ValueError, AttributeError):
        return fallback


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


def _regex_of(values: Iterable[str]) -> str:
    """A PromQL regex matcher value for exactly these strings."""
    alternatives = "|".join(re.escape(v) for v in sorted(set(values)))
    return alternatives.replace("\\", "\\\\").replace('"', '\\"')


def _label_name(name: str) -> str:
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
        raise PrometheusBadResponse(f"{name!r} is not a Prometheus label name")
    return name


def pool_gpu_figures(
    client: Client, *, nodes: Iterable[str], node_label: str = "Hostname", at: datetime | None = None
) -> PoolGpuFigures:
    """DCGM utilisation (mean %) and framebuffer memory used (MiB, summed) of the pool's GPUs."""
    nodes = list(nodes)
    if not nodes:
        return PoolGpuFigures()
    selector = f'{{{_label_name(node_label)}=~"{_regex_of(nodes)}"}}'
    utilisation = [s for s in client.query(f"DCGM_FI_DEV_GPU_UTIL{selector}", at=at) if s.value is not None]
    memory = client.query(f"sum(DCGM_FI_DEV_FB_USED{selector})", at=at)
    return PoolGpuFigures(
        gpus_reporting=len(utilisation),
        utilisation_percent=(sum(s.value or 0 for s in utilisation) / len(utilisation))
        if utilisation
        else None,
        memory_used_mib=(memory[0].value or 0.0) if memory else 0.0,
        nodes_reporting=len({s.labels.get(node_label) for s in utilisation}),
    )


def namespace_serving(
    client: Client,
    *,
    gpus_by_namespace: dict[str, int],
    hourly_cost: Decimal,
    window: str | None = None,
    at: datetime | None = None,
) -> list[NamespaceServing]:
    """vLLM figures per namespace, and the cost per generated token: the namespace's GPUs in use
    times the hourly price of one, per second, divided by the tokens generated per second."""
    if not gpus_by_namespace:
        return []
    window = window or RATE_WINDOW
    ns = f'{{{NAMESPACE_LABEL}=~"{_regex_of(gpus_by_namespace)}"}}'
    by = f"sum by ({NAMESPACE_LABEL})"

    def per_namespace(promql: str) -> dict[str, float | None]:
        return {s.labels.get(NAMESPACE_LABEL, ""): s.value for s in client.query(promql, at=at)}

    running = per_namespace(f"{by} (vllm:num_requests_running{ns})")
    # vLLM renamed its queue-time histogram; ask for either.
    queue = per_namespace(
        " or ".join(
            f"({by} (rate({name}_sum{ns}[{window}])) / {by} (rate({name}_count{ns}[{window}])))"
            for name in ("vllm:request_queue_time_seconds", "vllm:time_in_queue_requests")
        )
    )
    tokens = per_namespace(f"{by} (rate(vllm:generation_tokens_total{ns}[{window}]))")
    rows = []
    for namespace, gpus in sorted(gpus_by_namespace.items()):
        row = NamespaceServing(
            namespace=namespace,
            gpus=gpus,
            running=running.get(namespace),
            queue_seconds=queue.get(namespace),
            tokens_per_second=tokens.get(namespace),
        )
        if row.tokens_per_second and gpus:
            row.cost_per_token = cost_per_token(
                gpus=gpus, hourly_cost=hourly_cost, tokens_per_second=row.tokens_per_second
            )
        rows.append(row)
    return rows


def cost_per_token(*, gpus: int, hourly_cost: Decimal, tokens_per_second: float) -> Decimal:
    return gpus * hourly_cost / 3600 / Decimal(str(tokens_per_second))


def pool_prometheus(
    *,
    url: str,
    node_label: str,
    nodes: Iterable[str],
    gpus_by_namespace: dict[str, int],
    hourly_cost: Decimal,
    window: str | None = None,
    at: datetime | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> PoolPrometheus:
    """Everything the pool page shows from Prometheus; never raises for Prometheus' sake."""
    try:
        client = Client(url, timeout=timeout)
        return PoolPrometheus(
            gpu=pool_gpu_figures(client, nodes=nodes, node_label=node_label, at=at),
            serving=namespace_serving(
                client, gpus_by_namespace=gpus_by_namespace, hourly_cost=hourly_cost, window=window, at=at
            ),
        )
    except PrometheusError as exc:
        return PoolPrometheus(unavailable=exc.reason)
