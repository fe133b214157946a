"""The capacity request's hand-built representation equals DRF's field-by-field rendering."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework import serializers

from quotas import selectors, services
from quotas.api.serializers import CapacityRequestSerializer, capacity_request_rows
from quotas.models import CapacityRequest
from tests import factories

pytestmark = pytest.mark.django_db


def generic(instance: CapacityRequest) -> dict:
    """What DRF renders from the serializer's declarations, without the hand-built override."""
    serializer = CapacityRequestSerializer(instance)
    return dict(serializers.ModelSerializer.to_representation(serializer, instance))


def test_every_kind_of_request_renders_the_same_both_ways(world, settings) -> None:
    settings.PORTAL_PREFLIGHT = False
    now = timezone.now()
    draft = factories.request(world.alice, world.vision, world.a100, gpus=2, submit=False)
    draft.pool = None
    draft.save(update_fields=["pool"])
    sized = factories.request(
        world.alice,
        world.vision,
        world.a100,
        gpus=3,
        cpu=Decimal("12.5"),
        memory_gib=96,
        model_parameters_billion=Decimal("70"),
        model_precision="fp8",
        gpus_per_replica=1,
        ends_at=now + timedelta(days=3),
    )
    approved = factories.request(world.alice, world.vision, world.a100, gpus=1)
    services.capacity_request_approve(capacity_request=approved, actor=world.bob, comment="fine")
    services.capacity_request_approve(capacity_request=approved, actor=world.admin)
    rejected = factories.request(world.alice, world.vision, world.a100, gpus=1)
    services.capacity_request_reject(capacity_request=rejected, actor=world.bob, comment="too <big>")

    # Within the auto-approval rule: decided without a person, so the decision has no approver.
    auto = factories.experiment(world.alice, world.vision, world.mig)
    ids = [draft.pk, sized.pk, approved.pk, rejected.pk, auto.pk]
    rows = (
        CapacityRequest.objects.filter(pk__in=ids)
        .select_related("team", "requester", "accelerator", "pool__cluster", "grant")
        .prefetch_related("decisions__approver")
    )
    assert len(rows) == len(ids)
    for row in rows:
        assert CapacityRequestSerializer(row).data == generic(row)
    fast = {r.pk: CapacityRequestSerializer(r).data for r in rows}
    assert fast[draft.pk]["pool"] is None and fast[draft.pk]["pool_name"] is None
    assert fast[sized.pk]["cpu"] == "12.50"
    assert fast[approved.pk]["grant"] is not None
    assert [d["approver"] for d in fast[approved.pk]["decisions"]] == ["bob", "admin"]
    assert fast[rejected.pk]["decisions"][0]["comment"] == "too <big>"
    assert [d["approver"] for d in fast[auto.pk]["decisions"]] == [None]

    # The list endpoints' values path renders the very same JSON.
    values = list(selectors.capacity_request_values(CapacityRequest.objects.filter(pk__in=ids)))
    decisions = selectors.capacity_request_decision_values(request_ids=ids)
    from_values = {r["id"]: r for r in capacity_request_rows(values, decisions)}
    assert from_values == {row.pk: generic(row) for row in rows}


def test_the_list_endpoint_serves_the_values_path(world, settings) -> None:
    from rest_framework.test import APIClient

    from portal.api.services import api_token_issue

    settings.PORTAL_PREFLIGHT = False
    approved = factories.request(world.alice, world.vision, world.a100, gpus=1)
    services.capacity_request_approve(capacity_request=approved, actor=world.bob, comment="fine")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=world.bob, name='t').raw}")
    listed = client.get("/api/v1/capacity-requests/").json()["results"]
    one = client.get(f"/api/v1/capacity-requests/{approved.pk}/").json()
    assert listed == [one]
    row = CapacityRequest.objects.select_related("team", "requester", "accelerator", "pool__cluster").get()
    assert one == generic(row)
