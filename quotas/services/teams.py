"""Teams and their memberships."""

from django.core.exceptions import PermissionDenied
from django.db import transaction

from portal.models import User
from portal.services import audit_event_record
from quotas import policies
from quotas.models import Membership, Team


@transaction.atomic
def membership_set(*, team: Team, user: User, role: str, actor: User | None, message: str = "") -> Membership:
    """Put `user` on `team` with `role` (member or lead), auditing any change. `actor` None is the
    system (the identity provider's groups at sign-in, the demo seed)."""
    if not policies.can_manage_memberships(user=actor):
        raise PermissionDenied("Only platform admins change team memberships.")
    membership, created = Membership.objects.select_for_update().get_or_create(
        team=team, user=user, defaults={"role": role}
    )
    if created or membership.role != role:
        before = None if created else {"role": membership.role}
        membership.role = role
        membership.save()
        audit_event_record(
            actor=actor,
            action="membership.set",
            obj=membership,
            team=team,
            before=before,
            after={"role": role},
            message=message,
        )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User | None, message: str = "") -> None:
    """Take `user` off a team (the identity provider's groups no longer put them there)."""
    if not policies.can_manage_memberships(user=actor):
        raise PermissionDenied("Only platform admins change team memberships.")
    # Recorded before the delete, while the row still has its id for the audit trail.
    audit_event_record(
        actor=actor,
        action="membership.removed",
        obj=membership,
        team=membership.team,
        before={"role": membership.role},
        message=message,
    )
    membership.delete()
