"""The collector process without a cluster: the command's arguments, and a cluster whose
credentials cannot work, which must show as stale with the reason instead of crashing anything."""

import threading

import pytest
from django.core.management import CommandError, call_command

from pools.models import Cluster, ClusterUtilisation, CollectorState
from pools.utilisation.collector import Supervisor, trim_pod
from tests.testbed import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_command_refuses_unknown_clusters_and_bad_intervals():
    with pytest.raises(CommandError, match="No such cluster: nowhere"):
        call_command("collect_utilisation", "--cluster", "nowhere")
    with pytest.raises(CommandError, match="--interval must be at least 1 second"):
        call_command("collect_utilisation", "--interval", "0.1")


def test_supervisor_follows_clusters_and_reports_bad_credentials_as_stale():
    broken = Cluster.objects.create(name="broken", kubeconfig="current-context: [")
    supervisor = Supervisor(interval=5, backoff_max=1)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop, 0.2))
    thread.start()
    try:
        status = wait_until(
            "the collector to report the cluster stale",
            lambda: ClusterUtilisation.objects.filter(cluster=broken, state=CollectorState.STALE).first(),
        )
        assert "InvalidKubeconfig" in status.last_error
        assert "The kubeconfig is not valid YAML" in status.last_error
        assert status.observed_at is None
        # New credentials restart the cluster's collector; disabling the cluster stops it.
        first = supervisor.collectors[broken.pk][1]
        broken.kubeconfig = "current-context: {"
        broken.save()
        wait_until(
            "a new collector", lambda: supervisor.collectors.get(broken.pk, (None, first))[1] is not first
        )
        Cluster.objects.filter(pk=broken.pk).update(enabled=False)
        wait_until("the collector to stop", lambda: broken.pk not in supervisor.collectors)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_trimmed_pods_keep_what_the_figures_and_the_allowlist_read():
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "uid": "u",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "dcgm-exporter"},
            "ownerReferences": [{"kind": "DaemonSet", "name": "d", "uid": "x"}],
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "nodeName": "n1",
            "nodeSelector": {"a": "b"},
            "affinity": {"podAntiAffinity": {"x": 1}},
            "containers": [
                {"name": "c", "image": "i", "env": [], "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
            "tolerations": [{"key": "k"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [],
        },
    }
    assert trim_pod(pod) == {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "dcgm-exporter"},
            "ownerReferences": [{"kind": "DaemonSet"}],
        },
        "spec": {
            "nodeName": "n1",
            "nodeSelector": {"a": "b"},
            "affinity": {},
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}, "restartPolicy": None}],
            "initContainers": [],
            "overhead": {},
        },
        "status": {"phase": "Running", "conditions": []},
    }
