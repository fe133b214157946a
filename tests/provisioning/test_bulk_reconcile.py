"""Grants approved together are applied in one pass (quotas.reconcile.bulk) on the real testbed, through
a real Celery worker: each ends with its own objects, conditions, state moves and audit rows, exactly as
a single reconcile leaves them. Approvals one after another share a pass when they queue faster than
the workers take them, and a pass never takes a grant another one holds."""

import psycopg
import pytest
from django.db import connection

from pools.models import PoolClass
from portal.celery import app as celery_app
from portal.models import AuditEvent
from quotas import reconcile, services
from quotas.models import Grant
from quotas.services.decisions import APPROVE
from quotas.states import RequestState
from tests import factories
from tests.common import psycopg_params
from tests.provisioning.conftest import Org, Workers
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


def test_approvals_one_after_another_share_a_pass(org: Org, workers: Workers, wait_for) -> None:
    # The approvals queue their tasks while no worker takes them, as when the workers are busy.
    workers.default.stop()
    grants = [org.approve(gpus=gpus) for gpus in (1, 2, 3)]
    worker = workers.running_default()

    for grant in grants:
        done = wait_for(f"grant {grant.namespace} to become active", lambda grant=grant: settled(grant))
        assert conditions(done) == PROVISIONED
        assert org.audit_actions(done) == ["grant.created", "grant.provisioning", "grant.active"]
        quota = org.read("ResourceQuota", "gpu-grant", done.namespace)
        assert quota["status"]["hard"]["requests.nvidia.com/gpu"] == str(done.gpus)

    # The first approval's task took all three into its pass (the two after it found theirs taken).
    line = f"bulk reconcile on {org.cluster.name}: 3 grants"
    wait_for("the worker to log the shared pass", lambda: line in worker.log_path.read_text(errors="replace"))


def test_a_pass_skips_the_grants_another_transaction_holds(org: Org, workers: Workers) -> None:
    workers.default.stop()
    first, held, third = (org.approve(gpus=1) for _ in range(3))
    celery_app.control.purge()  # this test runs the passes itself, in this process

    with psycopg.connect(**psycopg_params(connection), autocommit=False) as other:
        other.execute("SELECT 1 FROM quotas_capacityrequest WHERE id = %s FOR UPDATE", [held.request_id])
        # A pass that waited for the lock would fail here on the timeout instead of hanging the suite.
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '10s'")
        try:
            reconcile.grants_provision(grant_ids=[first.pk])
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        # The held grant was skipped, not waited for; the pass took the first and the third.
        assert Grant.objects.get(pk=held.pk).request.state == RequestState.APPROVED
        for grant in (first, third):
            fresh = Grant.objects.select_related("request").get(pk=grant.pk)
            assert fresh.observed_generation == fresh.generation, fresh.conditions
            assert fresh.request.state in {RequestState.PROVISIONING, RequestState.ACTIVE}
            assert org.read("ResourceQuota", "gpu-grant", fresh.namespace) is not None
        assert org.read("Namespace", held.namespace) is None
        other.rollback()

    # Released, it goes with its own task; the third's own task then finds it taken and does nothing.
    reconcile.grants_provision(grant_ids=[held.pk])
    fresh = Grant.objects.get(pk=held.pk)
    assert fresh.observed_generation == fresh.generation and org.read("Namespace", held.namespace)
    events = AuditEvent.objects.count()
    outcome = reconcile.grants_provision(grant_ids=[third.pk])
    assert outcome == reconcile.BulkOutcome()
    assert AuditEvent.objects.count() == events


def test_a_grant_that_cannot_go_in_a_pass_is_handed_to_its_own_reconcile(org: Org, workers: Workers) -> None:
    workers.default.stop()
    grant = org.approve(gpus=1)
    celery_app.control.purge()
    org.cluster.enabled = False  # a disabled cluster's grants get their own reconcile's condition
    org.cluster.save(update_fields=["enabled"])
    outcome = reconcile.grants_provision(grant_ids=[grant.pk])
    assert outcome == reconcile.BulkOutcome(single=[grant.pk])
    assert Grant.objects.get(pk=grant.pk).request.state == RequestState.APPROVED
