"""Who may do what with teams, capacity requests, grants and serving deployments: one function a rule.

Services enforce these (raising PermissionDenied with the reason); views, templates and the API ask
the same functions what to offer, so the browser never shows a button the service would refuse.
Platform roles (admin, auditor) are portal.roles; reads are scoped by `visible_to(user)`.
"""

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet

from portal.models import User
from portal.roles import is_admin, is_read_only
from portal.statements import bound_rows
from quotas.models import ApprovalDecision, CapacityRequest, Membership
from quotas.states import RequestState

S = RequestState


def team_role(*, user: User, team_id: int) -> str | None:
    """The user's role in the team, None for a non-member. Compiled once per process: every create,
    submit and decision asks."""

    def build(user_id: int, team_id: int) -> QuerySet[Membership]:
        return Membership.objects.filter(user_id=user_id, team_id=team_id).values("role")

    if user.pk is None:  # anonymous
        return None
    found = bound_rows("team role", build, user_id=user.pk, team_id=team_id)
    return found[0]["role"] if found else None


def is_team_member(*, user: User, team_id: int) -> bool:
    return team_role(user=user, team_id=team_id) is not None


def is_team_lead(*, user: User, team_id: int) -> bool:
    return team_role(user=user, team_id=team_id) == Membership.Role.LEAD


def can_request(*, user: User, team_id: int) -> bool:
    """Ask for capacity for a team: its members, never read-only users."""
    return not is_read_only(user) and is_team_member(user=user, team_id=team_id)


def can_submit(*, user: User, capacity_request: CapacityRequest) -> bool:
    return user.pk == capacity_request.requester_id


def can_cancel(*, user: User, capacity_request: CapacityRequest) -> bool:
    """Withdraw a draft or pending request: its requester or a lead of its team."""
    if is_read_only(user):
        return False
    return user.pk == capacity_request.requester_id or is_team_lead(
        user=user, team_id=capacity_request.team_id
    )


def decision_stage(
    *, user: User, capacity_request: CapacityRequest, made_lead_decision: bool | None = None
) -> str:
    """The approval stage `user` may decide on the request, or PermissionDenied saying why not.

    Nobody decides their own request; the lead stage is for the team's leads; the platform stage is
    for platform admins, and never the one who already approved at the lead stage (two people).
    `made_lead_decision`: whether `user` decided the lead stage of this request, when the caller has
    looked it up already (a bulk decision does, for its whole batch); None looks it up.
    """
    req = capacity_request
    if user.pk == req.requester_id:
        raise PermissionDenied("Nobody approves or rejects their own request.")
    if req.state == S.PENDING_LEAD:
        if not is_team_lead(user=user, team_id=req.team_id):
            raise PermissionDenied(f"Only a lead of team {req.team.slug} can decide at the team-lead stage.")
        return ApprovalDecision.Stage.LEAD
    if req.state == S.PENDING_PLATFORM:
        if not is_admin(user):
            raise PermissionDenied("Only a platform admin can decide at the platform stage.")
        if made_lead_decision is None:
            made_lead_decision = req.decisions.filter(
                stage=ApprovalDecision.Stage.LEAD, approver=user
            ).exists()
        if made_lead_decision:
            # Two stages mean two people: a lead who is also a platform admin cannot wave their own
            # lead approval through.
            raise PermissionDenied(
                "You made the team-lead decision on this request; a different person must approve at "
                "the platform stage."
            )
        return ApprovalDecision.Stage.PLATFORM
    raise ValidationError(
        f"Request #{req.pk} is {req.get_state_display().lower()}; only pending requests can be decided.",
        code="not_pending",
    )


def can_decide(*, user: User, capacity_request: CapacityRequest) -> bool:
    if is_read_only(user):
        return False
    try:
        decision_stage(user=user, capacity_request=capacity_request)
    except (PermissionDenied, ValidationError):
        return False
    return True


def can_manage_grants(*, user: User) -> bool:
    """Revoke, shrink and delete the namespace of grants: platform admins."""
    return is_admin(user)


def can_operate_serving(*, user: User, team_id: int) -> bool:
    """Create, scale and delete a team's serving deployments: its members and platform admins,
    never read-only users."""
    if is_admin(user):
        return True
    return not is_read_only(user) and is_team_member(user=user, team_id=team_id)


def can_manage_memberships(*, user: User | None) -> bool:
    """Change who is on a team: platform admins, and the system itself (None: sign-in mapping, seed)."""
    return user is None or is_admin(user)
