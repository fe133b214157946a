"""Small builders for test data. Plain functions: the domain is small enough not to need a library."""

from datetime import timedelta
from decimal import Decimal
from itertools import count
from typing import Any

from django.utils import timezone

from pools.kube.objects import POOL_LABEL
from pools.models import Accelerator, Cluster, NodePool, PoolClass
from portal.models import User
from quotas import policies, services
from quotas.models import CapacityRequest, Grant, Membership, Team
from quotas.states import PENDING_STATES, RequestState

_seq = count(1)


def user(username: str | None = None, **fields: Any) -> User:
    username = username or f"user{next(_seq)}"
    return User.objects.create_user(username=username, password="pw", **fields)


def team(slug: str | None = None) -> Team:
    slug = slug or f"team{next(_seq)}"
    return Team.objects.create(slug=slug, name=slug.title())


def member(
    team: Team, username: str | None = None, role: str = Membership.Role.MEMBER, **fields: Any
) -> User:
    u = user(username, **fields)
    Membership.objects.create(team=team, user=u, role=role)
    return u


def accelerator(
    slug: str = "a100-80gb", memory_gib: int = 80, mig_profile: str = "", **fields: Any
) -> Accelerator:
    defaults = {
        "name": fields.pop("name", slug.upper()),
        "product": fields.pop("product", f"NVIDIA-{slug.upper()}"),
        "type_label": fields.pop("type_label", "nvidia-" + slug.split("-")[0]),
        "memory_gib": memory_gib,
        "mig_profile": mig_profile,
        "hourly_cost": fields.pop("hourly_cost", Decimal("2.5")),
    }
    return Accelerator.objects.get_or_create(slug=slug, defaults=defaults)[0]


def cluster(name: str = "local") -> Cluster:
    return Cluster.objects.get_or_create(name=name, defaults={"api_url": "https://127.0.0.1:6443"})[0]


def pool(
    name: str = "interactive-a100",
    pool_class: str = PoolClass.INTERACTIVE,
    acc: Accelerator | None = None,
    capacity: int = 32,
    headroom: int = 0,
    batch_fraction: str = "0",
    **fields: Any,
) -> NodePool:
    return NodePool.objects.create(
        cluster=fields.pop("cluster", None) or cluster(),
        name=name,
        pool_class=pool_class,
        accelerator=acc or accelerator(),
        node_selector={POOL_LABEL: name},
        taint_value=name,
        priority_class_name=f"gpu-{pool_class}",
        capacity_gpus=capacity,
        headroom_gpus=headroom,
        batch_fraction=Decimal(batch_fraction),
        zones=["zone-a", "zone-b"],
        **fields,
    )


def request(requester: User, team: Team, acc: Accelerator, gpus: int = 4, **fields: Any) -> CapacityRequest:
    now = timezone.now()
    kwargs = {
        "requester": requester,
        "team": team,
        "pool_class": PoolClass.INTERACTIVE,
        "accelerator": acc,
        "gpus": gpus,
        "starts_at": now,
        "ends_at": now + timedelta(days=30),
        "purpose": "serve a chat model",
    }
    kwargs.update(fields)
    return services.capacity_request_create(**kwargs)


def experiment(
    requester: User, team: Team, acc: Accelerator, *, gpus: int = 2, days: float = 1, **fields: Any
) -> CapacityRequest:
    """An experimentation request starting now: the class the default auto-approval rule covers."""
    now = timezone.now()
    return request(
        requester,
        team,
        acc,
        gpus=gpus,
        pool_class=PoolClass.EXPERIMENTATION,
        starts_at=now,
        ends_at=now + timedelta(days=days),
        **fields,
    )


def team_with_lead(slug: str, username: str) -> tuple[Team, User]:
    """A team and its one lead (whose own requests go straight to the platform stage)."""
    t = team(slug)
    return t, member(t, username, Membership.Role.LEAD)


def approved(req: CapacityRequest, *deciders: User) -> CapacityRequest:
    """`req` approved through every pending stage, each stage by the first of `deciders` who may
    decide it (quotas.policies), through the real services: the grant exists afterwards."""
    while req.state in PENDING_STATES:
        decider = next((d for d in deciders if policies.can_decide(user=d, capacity_request=req)), None)
        assert decider is not None, f"none of {deciders} may decide request #{req.pk} ({req.state})"
        services.capacity_request_approve(capacity_request=req, actor=decider)
        req.refresh_from_db()
    return req


def approved_grant(req: CapacityRequest, *deciders: User) -> Grant:
    return Grant.objects.get(request=approved(req, *deciders))


def active_grant(team: Team, pool: NodePool, gpus: int, namespace: str) -> Grant:
    """A grant in a holding state, made directly (no approval, no reconcile): for tests about what
    happens after approval, such as the figures of a namespace against its grant."""
    requester = team.memberships.first().user
    req = request(requester, team, pool.accelerator, gpus=gpus)
    CapacityRequest.objects.filter(pk=req.pk).update(state=RequestState.ACTIVE, pool=pool)
    now = timezone.now()
    return Grant.objects.create(
        request=req,
        team=team,
        pool=pool,
        gpus=gpus,
        namespace=namespace,
        starts_at=now,
        ends_at=now + timedelta(days=30),
    )
