"""The utilisation collector of one cluster, run in the test process: approvals read its live
inventory (the pre-flight asks no cluster), so tests that approve need one running, as production
does. Needs a transactional database (the collector's threads write through their own connections)."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pools.models import Cluster, ClusterInventory, ClusterUtilisation, CollectorState
from pools.utilisation.collector import ClusterCollector
from tests.testbed import wait_until


def inventory_live(cluster: Cluster) -> bool:
    """The collector watches `cluster` live and has written its inventory."""
    status = ClusterUtilisation.objects.filter(cluster=cluster).first()
    return (
        status is not None
        and status.state == CollectorState.LIVE
        and ClusterInventory.objects.filter(cluster=cluster).exists()
    )


@contextmanager
def live_collector(
    cluster: Cluster, *, wait: bool = True, timeout: float = 60.0, **options: Any
) -> Iterator[ClusterCollector]:
    options = {"interval": 2, "backoff_max": 2, **options}
    collector = ClusterCollector(cluster, **options)
    collector.start()
    try:
        if wait:
            wait_until(
                f"the collector's live inventory of {cluster.name}", lambda: inventory_live(cluster), timeout
            )
        yield collector
    finally:
        collector.stop()
