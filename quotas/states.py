"""The capacity request state machine: the exact set of states and the only allowed moves."""

from django.core.exceptions import ValidationError
from django.db import models


class RequestState(models.TextChoices):
    DRAFT = "draft", "Draft"
    PENDING_LEAD = "pending_lead", "Awaiting team lead"
    PENDING_PLATFORM = "pending_platform", "Awaiting platform admin"
    APPROVED = "approved", "Approved"
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


S = RequestState

# "Submitted" is an event, not a resting state: submitting a draft lands it in the first approval
# stage, or straight in APPROVED when the auto-approval rule applies.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.PENDING_LEAD, S.PENDING_PLATFORM, S.APPROVED, S.CANCELLED}),
    # A request still pending when its window ends expires undecided.
    S.PENDING_LEAD: frozenset({S.PENDING_PLATFORM, S.REJECTED, S.CANCELLED, S.EXPIRED}),
    S.PENDING_PLATFORM: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED, S.EXPIRED}),
    S.APPROVED: frozenset({S.PROVISIONING, S.ACTIVE, S.FAILED, S.REVOKED, S.EXPIRED}),
    S.PROVISIONING: frozenset({S.ACTIVE, S.FAILED, S.REVOKED, S.EXPIRED}),
    # Re-applying a grant (drift, retries, a shrink) keeps it active or failed: the reconciler only
    # reports the outcome, it never moves a grant back to provisioning.
    S.ACTIVE: frozenset({S.FAILED, S.REVOKED, S.EXPIRED}),
    S.FAILED: frozenset({S.ACTIVE, S.REVOKED, S.EXPIRED}),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
    S.REVOKED: frozenset(),
}

PENDING_STATES = frozenset({S.PENDING_LEAD, S.PENDING_PLATFORM})
# States in which a request holds GPUs of its pool: the capacity rules count these.
HOLDING_STATES = frozenset({S.APPROVED, S.PROVISIONING, S.ACTIVE, S.FAILED})
TERMINAL_STATES = frozenset(state for state, targets in TRANSITIONS.items() if not targets)


class InvalidTransition(ValidationError):
    def __init__(self, current: str, target: str) -> None:
        allowed = (
            ", ".join(sorted(RequestState(t).label for t in TRANSITIONS[current])) or "none (final state)"
        )
        super().__init__(
            f"A request that is {RequestState(current).label.lower()} cannot become "
            f"{RequestState(target).label.lower()}. Allowed next states: {allowed}.",
            code="invalid_transition",
        )
        self.current = current
        self.target = target


def check_transition(current: str, target: str) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)
