"""`seed_demo` builds the demo organisation from testbed/topology.yaml; running it again changes nothing."""

from io import StringIO
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory

from pools.models import Accelerator, Cluster, NodePool, PoolClass
from portal.models import User
from quotas.models import Membership, Team

pytestmark = pytest.mark.django_db

TOPOLOGY = settings.BASE_DIR / "testbed" / "topology.yaml"


def _signs_in(username: str, password: str) -> bool:
    # A sign-in comes with its request. One address per account: the password-guessing throttle counts the
    # failures of all accounts from one address too, and this test fails one attempt for each.
    address = f"192.0.2.{sum(map(ord, username)) % 250 + 1}"
    request = RequestFactory().post("/login/", REMOTE_ADDR=address)
    return authenticate(request, username=username, password=password) is not None


def _expected_pools(topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each GPU pool of the topology as the portal should see it, computed from the file itself."""
    prefix = topology["labelPrefix"]
    expected = {}
    for spec in topology["pools"]:
        if "accelerator" not in spec:
            continue  # the CPU pool is not offered to teams
        mig = spec.get("mig")
        units_per_node = spec["gpus"] * (mig["slicesPerGpu"] if mig else 1)
        accelerator = spec["accelerator"]
        if mig:
            accelerator += "-mig-" + mig["profile"].replace(".", "-")
        expected[spec["name"]] = {
            "pool_class": spec["class"],
            "accelerator": accelerator,
            "resource": f"nvidia.com/mig-{mig['profile']}" if mig else "nvidia.com/gpu",
            "capacity_gpus": sum(spec["nodes"].values()) * units_per_node,
            "zones": sorted(spec["nodes"]),
            "node_selector": {f"{prefix}pool": spec["name"]},
            "taint": (f"{prefix}pool", spec["name"], "NoSchedule"),
        }
    return expected


def _counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Accelerator, Cluster, NodePool, Team, Membership, User)
    }


def _seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seed_demo_builds_the_testbed_organisation_and_is_idempotent() -> None:
    topology = yaml.safe_load(TOPOLOGY.read_text())
    expected = _expected_pools(topology)
    # The four classes of the design, one pool each; the MIG pool slices its GPUs.
    assert sorted(p["pool_class"] for p in expected.values()) == sorted(PoolClass.values)

    output = _seed()
    assert "Demo data ready: cluster local with 4 pools." in output

    accelerators = {a.slug: a for a in Accelerator.objects.all()}
    assert sorted(accelerators) == sorted(p["accelerator"] for p in expected.values())
    assert len(accelerators) == 4
    mig = accelerators["a100-40gb-mig-1g-10gb"]
    assert (mig.mig_profile, mig.memory_gib, mig.resource_name) == ("1g.10gb", 10, "nvidia.com/mig-1g.10gb")
    assert mig.product == topology["accelerators"]["a100-40gb"]["product"]

    cluster = Cluster.objects.get()
    assert cluster.name == "local"
    assert cluster.zones == sorted({z for p in topology["pools"] for z in p["nodes"]})
    pools = {
        p.name: {
            "pool_class": p.pool_class,
            "accelerator": p.accelerator.slug,
            "resource": p.accelerator.resource_name,
            "capacity_gpus": p.capacity_gpus,
            "zones": p.zones,
            "node_selector": p.node_selector,
            "taint": (p.taint_key, p.taint_value, p.taint_effect),
        }
        for p in NodePool.objects.filter(cluster=cluster).select_related("accelerator")
    }
    assert pools == expected
    assert pools["experimentation-mig"]["capacity_gpus"] == 2 * 8 * 4

    roles = set(Membership.objects.values_list("team__slug", "user__username", "role"))
    assert roles == {
        ("vision", "alice", Membership.Role.MEMBER),
        ("vision", "bob", Membership.Role.LEAD),
        ("nlp", "carol", Membership.Role.MEMBER),
    }
    admin, auditor = User.objects.get(username="admin"), User.objects.get(username="audrey")
    assert (admin.is_platform_admin, admin.is_staff, admin.is_superuser, admin.is_auditor) == (
        True,
        True,
        True,
        False,
    )
    assert (auditor.is_auditor, auditor.is_platform_admin, auditor.is_staff) == (True, False, False)
    for username in ("alice", "bob", "carol", "admin", "audrey"):
        assert _signs_in(username, settings.DEMO_PASSWORD), username
        assert not _signs_in(username, settings.DEMO_PASSWORD + "x")

    before = _counts()
    _seed()
    assert _counts() == before
    assert {p.name: p.capacity_gpus for p in NodePool.objects.all()} == {
        name: p["capacity_gpus"] for name, p in expected.items()
    }
    assert _signs_in("alice", settings.DEMO_PASSWORD)


def test_seed_demo_for_single_sign_on_matches_the_demo_realm_and_switches_back() -> None:
    import json

    from portal.sso import roles_from_groups

    out = StringIO()
    call_command("seed_demo", "--sso", stdout=out)
    assert "local break-glass account: admin" in out.getvalue()
    realm = json.loads((settings.BASE_DIR / "testbed" / "gpu-portal-realm.json").read_text())
    by_email = {u["email"]: u for u in realm["users"]}
    for user in User.objects.exclude(username="admin"):
        # The people are Keycloak's: no portal password, and the realm's groups give what the seed gives.
        assert not user.has_usable_password(), user
        roles = roles_from_groups(by_email[user.email]["groups"])
        assert roles.teams == dict(Membership.objects.filter(user=user).values_list("team__slug", "role"))
        assert (roles.platform_admin, roles.auditor) == (user.is_platform_admin, user.is_auditor), user
    assert _signs_in("admin", settings.DEMO_PASSWORD)
    assert not _signs_in("alice", settings.DEMO_PASSWORD)

    _seed()  # `make run` without single sign-on: everyone has the demo password again
    assert _signs_in("alice", settings.DEMO_PASSWORD)
