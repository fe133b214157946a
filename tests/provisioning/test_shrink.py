"""Shrinking a running grant through the API lowers the quota on the real testbed (real Celery worker)."""

import pytest
from rest_framework.test import APIClient

from portal.api.services import api_token_issue
from portal.models import AuditEvent
from quotas.models import Grant
from tests.provisioning.conftest import Org
from tests.provisioning.support import settled

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_shrink_lowers_the_quota_on_the_cluster_and_is_audited(org: Org, worker, wait_for) -> None:
    grant = org.approve(gpus=4)
    ns = grant.namespace
    wait_for(f"grant {ns} to become active", lambda: settled(grant))
    assert org.read("ResourceQuota", "gpu-grant", ns)["status"]["hard"]["requests.nvidia.com/gpu"] == "4"

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=org.admin, name='t').raw}")
    url = f"/api/v1/grants/{grant.pk}/shrink/"
    for _ in range(2):  # a retried call with the same key shrinks once
        response = client.post(url, {"gpus": 2}, format="json", HTTP_IDEMPOTENCY_KEY=f"shrink-{grant.pk}")
        assert response.status_code == 200, response.content
        assert response.json()["gpus"] == 2

    def quota_lowered() -> Grant | None:
        fresh = settled(grant)
        if fresh is None or fresh.generation != 2:
            return None
        hard = org.read("ResourceQuota", "gpu-grant", ns)["status"]["hard"]
        return fresh if hard["requests.nvidia.com/gpu"] == "2" else None

    grant = wait_for("the shrunk quota to be enforced", quota_lowered)
    quota = org.read("ResourceQuota", "gpu-grant", ns)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "2"
    assert grant.gpus == 2

    shrunk = AuditEvent.objects.get(action="grant.shrunk", object_id=str(grant.pk))
    assert (shrunk.actor, shrunk.before, shrunk.after) == (org.admin, {"gpus": 4}, {"gpus": 2})
    assert org.audit_actions(grant)[:4] == [
        "grant.created",
        "grant.provisioning",
        "grant.active",
        "grant.shrunk",
    ]

    # Bounds come back as a field error, not a 500.
    response = client.post(url, {"gpus": 1}, format="json")
    assert response.status_code == 200
    response = client.post(url, {"gpus": 1}, format="json")
    assert response.status_code == 400
    assert "holds 1 GPU, the least a grant can hold" in str(response.json())
