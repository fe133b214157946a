"""Idempotent demo data: the accelerator catalogue, teams, people and a cluster mirroring the testbed."""

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from pools.models import Accelerator, Cluster, NodePool, PoolClass
from pools.tasks import cluster_policies_apply
from portal.models import User
from quotas.models import Membership, Team
from quotas.services import membership_set

TOPOLOGY = settings.BASE_DIR / "testbed" / "topology.yaml"

# Demo list prices per unit-hour; a real install edits them in the admin.
PRICES = {
    "a100-80gb": ("NVIDIA A100 80GB", Decimal("3.40")),
    "a100-40gb": ("NVIDIA A100 40GB", Decimal("2.60")),
    "h100-80gb": ("NVIDIA H100 80GB", Decimal("6.90")),
    "l4-24gb": ("NVIDIA L4 24GB", Decimal("0.80")),
}
# What each class keeps back: warm headroom for interactive traffic, how much batch may borrow.
CLASS_POLICY: dict[str, dict[str, Any]] = {
    PoolClass.INTERACTIVE: {"headroom_node_share": 1, "batch_fraction": Decimal("0.25"), "max_per_team": 16},
    PoolClass.BATCH: {"headroom_node_share": 0, "batch_fraction": Decimal("1.00"), "max_per_team": None},
    PoolClass.EMBEDDING: {"headroom_node_share": 0, "batch_fraction": Decimal("0"), "max_per_team": 8},
    PoolClass.EXPERIMENTATION: {"headroom_node_share": 0, "batch_fraction": Decimal("0"), "max_per_team": 16},
}


def catalogue_entry(topology: dict[str, Any], pool: dict[str, Any]) -> Accelerator:
    key = pool["accelerator"]
    spec = topology["accelerators"][key]
    name, price = PRICES.get(key, (key.upper(), Decimal("1")))
    mig = pool.get("mig")
    if mig:
        slices = mig["slicesPerGpu"]
        slug = f"{key}-mig-{mig['profile'].replace('.', '-')}"
        values = {
            "name": f"{name} MIG {mig['profile']}",
            "memory_gib": int(mig["profile"].split(".")[1].removesuffix("gb")),
            "mig_profile": mig["profile"],
            "hourly_cost": (price / slices).quantize(Decimal("0.001")),
        }
    else:
        slug = key
        values = {"name": name, "memory_gib": spec["memoryGiB"], "mig_profile": "", "hourly_cost": price}
    values.update(product=spec["product"], type_label=spec["type"])
    return Accelerator.objects.update_or_create(slug=slug, defaults=values)[0]


class Command(BaseCommand):
    help = "Create or refresh the demo catalogue, teams, users and the local cluster's pools."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kubeconfig", type=Path, help="Store this kubeconfig as the demo cluster's credentials"
        )
        parser.add_argument("--topology", type=Path, default=TOPOLOGY)
        parser.add_argument(
            "--sso",
            action="store_true",
            help="People sign in through the demo Keycloak (no portal password); only admin stays local",
        )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        topology = yaml.safe_load(options["topology"].read_text())
        password = settings.DEMO_PASSWORD
        prefix = topology["labelPrefix"]

        cluster, _ = Cluster.objects.get_or_create(name="local")
        if options["kubeconfig"]:
            cluster.kubeconfig = options["kubeconfig"].read_text()
        zones: set[str] = set()
        for spec in topology["pools"]:
            if spec["class"] not in PoolClass.values:
                continue  # the general CPU pool is not offered to teams
            accelerator = catalogue_entry(topology, spec)
            nodes = sum(spec["nodes"].values())
            units_per_node = spec["gpus"] * (spec["mig"]["slicesPerGpu"] if spec.get("mig") else 1)
            policy = CLASS_POLICY[spec["class"]]
            zones.update(spec["nodes"])
            NodePool.objects.update_or_create(
                cluster=cluster,
                name=spec["name"],
                defaults={
                    "pool_class": spec["class"],
                    "accelerator": accelerator,
                    "node_selector": {f"{prefix}pool": spec["name"]},
                    "taint_key": f"{prefix}pool",
                    "taint_value": spec["name"],
                    "taint_effect": "NoSchedule",
                    "priority_class_name": f"gpu-{spec['class']}",
                    "zones": sorted(spec["nodes"]),
                    "capacity_gpus": nodes * units_per_node,
                    "headroom_gpus": policy["headroom_node_share"] * units_per_node,
                    "batch_fraction": policy["batch_fraction"],
                    "max_gpus_per_team": policy["max_per_team"],
                },
            )
        cluster.zones = sorted(zones)
        cluster.save()
        if options["kubeconfig"]:
            # PriorityClasses and the contract policy, as registering the cluster would apply them.
            transaction.on_commit(lambda: cluster_policies_apply.delay(cluster.pk), robust=True)

        vision, _ = Team.objects.update_or_create(slug="vision", defaults={"name": "Vision"})
        nlp, _ = Team.objects.update_or_create(slug="nlp", defaults={"name": "NLP"})
        people = [
            ("alice", vision, Membership.Role.MEMBER, {}),
            ("bob", vision, Membership.Role.LEAD, {}),
            ("carol", nlp, Membership.Role.MEMBER, {}),
            ("admin", None, None, {"is_platform_admin": True, "is_staff": True, "is_superuser": True}),
            ("audrey", None, None, {"is_auditor": True}),
        ]
        for username, team, role, flags in people:
            user, _ = User.objects.update_or_create(
                username=username, defaults={"email": f"{username}@example.com", **flags}
            )
            if options["sso"] and username != "admin":
                # Single sign-on owns these people: their teams and roles come from their Keycloak groups
                # at each sign-in (testbed/gpu-portal-realm.json); admin is the local break-glass account.
                user.set_unusable_password()
            else:
                user.set_password(password)
            user.save()
            if team:
                membership_set(team=team, user=user, role=role, actor=None)

        pools = NodePool.objects.filter(cluster=cluster).count()
        self.stdout.write(self.style.SUCCESS(f"Demo data ready: cluster {cluster.name} with {pools} pools."))
        if options["sso"]:
            self.stdout.write(
                "Sign-in through Keycloak (password 'demo'): alice (vision member), bob (vision lead), "
                "carol (nlp member), audrey (auditor), pat (platform admin), vera (vision member); "
                f"local break-glass account: admin (password {password!r})"
            )
            return
        self.stdout.write(
            f"Logins (password {password!r}): alice (vision member), bob (vision lead), carol (nlp member), "
            "admin (platform admin), audrey (auditor)"
        )
