"""/metrics: the utilisation figures as Prometheus gauges, read from the database at each scrape.

The collector process owns the cluster watches; the web process only reads what it wrote, so any
number of web workers answer scrapes consistently. Without PORTAL_METRICS_TOKEN the endpoint is
open and must be reachable only from the monitoring network (docs/utilisation.md); with it, a
scrape must send `Authorization: Bearer <token>`.
"""

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pools.models import CollectorState
from pools.utilisation import selectors
from pools.utilisation.figures import POOL_FIGURES
from pools.utilisation.queue_metrics import QueueMetricsCollector

POOL_LABELS = ["cluster", "pool", "pool_class", "accelerator"]
TEAM_LABELS = ["cluster", "pool", "team", "namespace"]


class UtilisationCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        data = selectors.metrics_data()
        now = timezone.now()
        up = GaugeMetricFamily(
            "gpu_portal_cluster_up",
            "1 while the collector watches the cluster live, else 0.",
            labels=["cluster"],
        )
        age = GaugeMetricFamily(
            "gpu_portal_cluster_data_age_seconds",
            "Seconds since the figures were last confirmed by the cluster.",
            labels=["cluster"],
        )
        autoscaler = GaugeMetricFamily(
            "gpu_portal_cluster_autoscaler_available",
            "1 while the cluster's autoscaler is available, 0 while it is not (absent when not known).",
            labels=["cluster"],
        )
        for cluster, status in data.clusters:
            inventory = getattr(cluster, "inventory", None)
            if inventory is not None and inventory.autoscaler_state in ("available", "unavailable"):
                autoscaler.add_metric(
                    [cluster.name], 1.0 if inventory.autoscaler_state == "available" else 0.0
                )
            live = (
                status is not None
                and status.state == CollectorState.LIVE
                and now - status.heartbeat_at <= selectors.COLLECTOR_SILENT_AFTER
            )
            up.add_metric([cluster.name], 1.0 if live else 0.0)
            if status is not None and status.observed_at is not None:
                age.add_metric([cluster.name], max(0.0, (now - status.observed_at).total_seconds()))
        yield up
        yield age
        yield autoscaler

        pool_families = {
            figure.name: GaugeMetricFamily(
                f"gpu_portal_pool_{figure.metric}", figure.help, labels=POOL_LABELS
            )
            for figure in POOL_FIGURES
        }
        headroom = GaugeMetricFamily(
            "gpu_portal_pool_headroom_gpus", "Warm units an interactive pool keeps free.", labels=POOL_LABELS
        )
        headroom_short = GaugeMetricFamily(
            "gpu_portal_pool_headroom_short",
            "1 when an interactive pool has fewer free units than its warm buffer.",
            labels=POOL_LABELS,
        )
        team_used = GaugeMetricFamily(
            "gpu_portal_namespace_gpus_requested",
            "Units requested by a namespace's pods.",
            labels=TEAM_LABELS,
        )
        team_granted = GaugeMetricFamily(
            "gpu_portal_namespace_gpus_granted", "Units granted to the namespace's grant.", labels=TEAM_LABELS
        )
        team_pending = GaugeMetricFamily(
            "gpu_portal_namespace_gpus_pending",
            "Units asked for by a namespace's pending pods.",
            labels=TEAM_LABELS,
        )
        for figures in data.pools:
            pool = figures.pool
            labels = [pool.cluster.name, pool.name, pool.pool_class, pool.accelerator.slug]
            for figure in POOL_FIGURES:
                pool_families[figure.name].add_metric(labels, float(getattr(figures, figure.name)))
            headroom.add_metric(labels, float(pool.headroom_gpus))
            headroom_short.add_metric(labels, 1.0 if figures.headroom_short else 0.0)
            for usage in figures.detail.get("namespaces", []):
                team_labels = [pool.cluster.name, pool.name, usage.get("team") or "", usage["namespace"]]
                team_used.add_metric(team_labels, float(usage.get("gpus", 0)))
                team_granted.add_metric(team_labels, float(usage.get("granted", 0)))
                team_pending.add_metric(team_labels, float(usage.get("pending_gpus", 0)))
        yield from pool_families.values()
        yield from (headroom, headroom_short, team_used, team_granted, team_pending)

        load = GaugeMetricFamily(
            "gpu_portal_serving_model_load_seconds",
            "Seconds from creating a serving deployment until all its replicas were Ready.",
            labels=["cluster", "pool", "team", "namespace", "deployment"],
        )
        for deployment in data.deployments:
            pool = deployment.grant.pool
            load.add_metric(
                [
                    pool.cluster.name,
                    pool.name,
                    deployment.team.slug,
                    deployment.grant.namespace,
                    deployment.name,
                ],
                float(deployment.load_seconds or 0),
            )
        yield load


def _authorised(request: HttpRequest) -> bool:
    token = settings.PORTAL_METRICS_TOKEN
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@login_not_required
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorised(request):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UtilisationCollector())
    registry.register(QueueMetricsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
