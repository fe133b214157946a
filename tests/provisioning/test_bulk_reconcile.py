"""Grants approved together are applied in one pass (quotas.reconcile.bulk) on the real testbed, through
a real Celery worker: each ends with its own objects, conditions, state moves and audit rows, exactly as
a single reconcile leaves them."""

import pytest

from pools.models import PoolClass
from quotas import services
from quotas.models import Grant
from quotas.services.decisions import APPROVE
from tests import factories
from tests.provisioning.conftest import Org
from tests.provisioning.support import PROVISIONED, conditions, settled

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_grants_approved_together_are_reconciled_in_one_pass(org: Org, worker, wait_for) -> None:
    requests = [
        factories.request(org.member, org.team, org.a100, gpus=gpus, pool_class=PoolClass.INTERACTIVE)
        for gpus in (1, 2, 3)
    ]
    results = services.capacity_requests_decide(
        actor=org.admin, request_ids=[r.pk for r in requests], decision=APPROVE, comment="together"
    )
    assert [r.outcome for r in results] == ["approved"] * 3, [r.error for r in results]
    grants = list(Grant.objects.filter(request__in=requests).order_by("gpus"))
    org.grants += grants

    for grant in grants:
        done = wait_for(f"grant {grant.namespace} to become active", lambda grant=grant: settled(grant))
        assert conditions(done) == PROVISIONED
        assert all(c["observedGeneration"] == done.generation for c in done.conditions)
        assert org.audit_actions(done) == ["grant.created", "grant.provisioning", "grant.active"]
        quota = org.read("ResourceQuota", "gpu-grant", done.namespace)
        assert quota["status"]["hard"]["requests.nvidia.com/gpu"] == str(done.gpus)
        assert org.read("RoleBinding", "gpu-grant-team", done.namespace, "rbac.authorization.k8s.io/v1")

    # They went through the bulk pass, not one by one: its timing line names this cluster and all three.
    line = f"bulk reconcile on {org.cluster.name}: 3 grants"
    wait_for("the worker to log the bulk pass", lambda: line in worker.log_path.read_text(errors="replace"))
