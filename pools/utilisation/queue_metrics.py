"""/metrics gauges of the Kueue queues (docs/queueing.md), registered next to the utilisation
gauges by pools.utilisation.metrics. One series per portal ClusterQueue, labelled with its pool and
team, so Prometheus sums them per pool or team; read from the collector's tables at each scrape."""

from collections.abc import Iterator

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pools.utilisation.queue_selectors import queue_metrics_data
from pools.utilisation.queues import RATE_WINDOW

QUEUE_LABELS = ["cluster", "pool", "team", "namespace", "cluster_queue"]
WINDOW = f"{int(RATE_WINDOW.total_seconds() // 60)} minutes"

# (QueueStatus field, gauge gpu_portal_queue_<field>, help)
GAUGES = (
    ("nominal_gpus", "GPUs of the queue's nominal quota (its grant's)."),
    ("used_gpus", "GPUs of the Workloads Kueue admitted into the queue."),
    ("borrowed_gpus", "GPUs the queue uses beyond its nominal quota, borrowed in the cohort."),
    ("lent_gpus", "Idle nominal GPUs of the queue that others of the cohort use (apportioned)."),
    ("pending_workloads", "Workloads waiting in the queue."),
    ("admitted_workloads", "Workloads admitted and not finished."),
    ("oldest_pending_seconds", "Longest wait of a pending Workload."),
)


class QueueMetricsCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        data = queue_metrics_data(now=now)
        families = {
            field: GaugeMetricFamily(f"gpu_portal_queue_{field}", text, labels=QUEUE_LABELS)
            for field, text in GAUGES
        }
        admissions = GaugeMetricFamily(
            "gpu_portal_queue_admissions_recent",
            f"Admissions into the queue in the last {WINDOW}.",
            labels=QUEUE_LABELS,
        )
        wait = GaugeMetricFamily(
            "gpu_portal_queue_admission_wait_seconds",
            f"Mean wait from queueing to admission of the admissions of the last {WINDOW}.",
            labels=QUEUE_LABELS,
        )
        for queue in data.queues:
            labels = [
                queue.cluster.name,
                queue.pool.name if queue.pool else "",
                queue.team.slug if queue.team else "",
                queue.namespace,
                queue.name,
            ]
            for field, family in families.items():
                family.add_metric(labels, float(getattr(queue, field)))
            count, total = data.waits.get((queue.cluster_id, queue.name), (0, 0.0))
            admissions.add_metric(labels, float(count))
            if count:
                wait.add_metric(labels, total / count)
        yield from families.values()
        yield admissions
        yield wait
        up = GaugeMetricFamily(
            "gpu_portal_kueue_webhook_up",
            "1 when Kueue's webhook admitted the collector's last dry-run Job, 0 when it failed (Jobs in "
            "queued namespaces are refused); absent until there is a queued grant to probe.",
            labels=["cluster"],
        )
        for status in data.kueue:
            if status.webhook_ok is not None:
                up.add_metric([status.cluster.name], 1.0 if status.webhook_ok else 0.0)
        yield up
