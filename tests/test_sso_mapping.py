"""The mapping from the identity provider's groups to teams and roles (portal/sso.py), without a provider."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.models import AuditEvent, User
from portal.sso import ClaimError, check_group_mapping, groups_from_claims, roles_from_groups, user_roles_sync
from quotas.models import Membership
from tests import factories

LEAD, MEMBER = Membership.Role.LEAD, Membership.Role.MEMBER


def test_default_groups_map_to_teams_leads_and_platform_roles():
    roles = roles_from_groups(["/teams/vision", "/teams/nlp/leads", "/platform-admins", "/other", "/teams"])
    assert roles.teams == {"vision": MEMBER, "nlp": LEAD}
    assert (roles.platform_admin, roles.auditor) == (True, False)
    assert roles_from_groups(["/auditors"]).auditor
    # Leading implies membership, whichever group comes first; nested or malformed paths are no team.
    assert roles_from_groups(["/teams/vision/leads", "/teams/vision"]).teams == {"vision": LEAD}
    assert roles_from_groups(["/teams/vision/leads/x", "/teams/Vision", "/teams/-x"]).teams == {}


def test_other_naming_conventions_are_a_setting(settings):
    settings.PORTAL_OIDC_GROUPS = {
        **settings.PORTAL_OIDC_GROUPS,
        "TEAM_GROUP": "gpu-{team}",
        "LEAD_GROUP": "gpu-{team}-leads",
        "ADMIN_GROUPS": ["gpu-admins", "sre"],
    }
    roles = roles_from_groups(["gpu-vision", "gpu-nlp-leads", "sre"])
    # "gpu-nlp-leads" also fits "gpu-{team}" (a team "nlp-leads"): the lead pattern wins.
    assert roles.teams == {"vision": MEMBER, "nlp": LEAD} and roles.platform_admin


def test_a_pattern_without_exactly_one_team_placeholder_is_refused(settings):
    settings.PORTAL_OIDC_GROUPS = {**settings.PORTAL_OIDC_GROUPS, "LEAD_GROUP": "/leads"}
    with pytest.raises(ImproperlyConfigured, match="PORTAL_OIDC_LEAD_GROUP='/leads' must contain"):
        roles_from_groups([])
    assert [e.id for e in check_group_mapping()] == ["portal.E001"]


def test_the_groups_claim_absent_means_no_groups_and_a_malformed_one_is_refused():
    # Keycloak leaves the claim out for a user in no group.
    assert groups_from_claims({"email": "a@example.com"}, "groups") == []
    assert groups_from_claims({"groups": "/teams/vision"}, "groups") == ["/teams/vision"]
    for bad in ({"groups": {"a": 1}}, {"groups": [1, 2]}):
        with pytest.raises(ClaimError, match="not a list of group names"):
            groups_from_claims(bad, "groups")


def _sync(user: User, groups: list[str]) -> list[str]:
    return user_roles_sync(user=user, roles=roles_from_groups(groups), groups=groups)


def test_sync_adds_changes_and_removes_each_change_audited_and_is_idempotent(world):
    user = User.objects.create_user("dana@example.com", email="dana@example.com")  # as SSO makes them
    nlp_only = factories.team("robotics")
    Membership.objects.create(team=nlp_only, user=user, role=MEMBER)  # made by hand in the portal

    changes = _sync(user, ["/teams/vision/leads", "/teams/nlp", "/teams/ghost", "/auditors"])
    assert changes == [
        "nlp: member",
        "vision: lead",
        "robotics: removed",
        "platform admin: False, auditor: True",
    ]
    assert dict(Membership.objects.filter(user=user).values_list("team__slug", "role")) == {
        "vision": LEAD,
        "nlp": MEMBER,
    }
    user.refresh_from_db()
    assert user.is_auditor and not user.is_platform_admin
    actions = list(AuditEvent.objects.order_by("id").values_list("action", "team__slug", "actor"))
    assert actions == [
        ("membership.set", "nlp", None),
        ("membership.set", "vision", None),
        ("membership.removed", "robotics", None),
        ("user.roles_set", None, None),
    ]
    assert _sync(user, ["/teams/vision/leads", "/teams/nlp", "/auditors"]) == []
    assert AuditEvent.objects.count() == 4

    assert _sync(user, ["/teams/vision"]) == [
        "vision: member",
        "nlp: removed",
        "platform admin: False, auditor: False",
    ]
    removed = AuditEvent.objects.get(action="membership.removed", team__slug="nlp")
    assert removed.before == {"role": MEMBER} and removed.message.startswith("Single sign-on")
