"""`manage.py collect_utilisation [--cluster NAME]... [--interval 15]`: the utilisation collector.

A long-lived process: one list+watch collector per enabled cluster whose lease it holds
(docs/utilisation.md, "Scaling out"). Run as many replicas as you like: they share the clusters
(each watched by exactly one), and a dead replica's clusters are taken over within
PORTAL_COLLECTOR_LEASE_SECONDS + PORTAL_COLLECTOR_RENEW_SECONDS (15 + 5 s by default).
"""

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pools.models import Cluster
from pools.utilisation.collector import Supervisor


class Command(BaseCommand):
    help = "Watch the clusters' nodes and pods and keep the pools' utilisation figures and history current."
    # A long-running process, as the web and Celery workers (which run no system checks either): the
    # checks run where the deployment runs `migrate` and `check --deploy`, and skipping them here
    # brings a restarted collector's first view 0.4 s sooner.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--cluster",
            action="append",
            dest="clusters",
            metavar="NAME",
            help="Only this cluster (repeatable); default: every enabled cluster, following new ones.",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=15.0,
            help="Seconds between history samples (default 15). Live figures follow every change.",
        )
        parser.add_argument(
            "--backoff-max",
            type=float,
            default=30.0,
            help="Longest wait between reconnection attempts to a cluster that does not answer (default 30).",
        )

    def handle(
        self, *args: Any, clusters: list[str] | None, interval: float, backoff_max: float, **options: Any
    ) -> None:
        if interval < 1:
            raise CommandError("--interval must be at least 1 second.")
        if backoff_max < 1:
            raise CommandError("--backoff-max must be at least 1 second.")
        if clusters:
            known = set(Cluster.objects.filter(name__in=clusters).values_list("name", flat=True))
            missing = sorted(set(clusters) - known)
            if missing:
                raise CommandError(f"No such cluster: {', '.join(missing)}.")
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.stdout.write(f"collect_utilisation: {signal.Signals(signum).name}, stopping")
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        supervisor = Supervisor(names=clusters, interval=interval, backoff_max=backoff_max)
        scope = ", ".join(clusters) if clusters else "every enabled cluster (a fair share of them)"
        self.stdout.write(
            f"collect_utilisation: watching {scope}; a history sample every {interval:g}s; "
            f"replica {supervisor.holder}, leases of {supervisor.lease_seconds:g}s renewed every "
            f"{supervisor.renew_seconds:g}s"
        )
        self.stdout.flush()
        supervisor.run(stop)
