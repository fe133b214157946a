"""Single sign-on through a real Keycloak (tests/keycloak.py): its login page, its groups, its admin API.

The identity provider is the source of truth: a user moved between groups in Keycloak is a member, then a lead
who approves, then nobody in the team, each at their next sign-in. Local accounts stay out of its reach.
"""

import re

from playwright.sync_api import Browser, Page, expect

from portal.models import AuditEvent, User
from quotas.models import Membership
from tests import factories
from tests.keycloak import REALM
from tests.ui.browser import screenshot

KEYCLOAK_PASSWORD = "demo"  # the realm file's users


def sso_on(settings, keycloak) -> None:
    for name, value in keycloak.portal_settings().items():
        setattr(settings, name, value)


def sso_sign_in(browser: Browser, base_url: str, username: str, *, lands_on: str = "/") -> Page:
    """A fresh browser (no Keycloak session either) through the portal's button and Keycloak's own form."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto("/login/")
    page.get_by_role("link", name="Sign in with your organisation account").click()
    page.wait_for_url(re.compile(rf"^http://127\.0\.0\.1:\d+/realms/{REALM}/protocol/openid-connect/auth"))
    page.get_by_label("Username or email").fill(username)
    page.get_by_label("Password", exact=True).fill(KEYCLOAK_PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{base_url}{lands_on}")
    return page


def memberships(user: User) -> dict[str, str]:
    return dict(Membership.objects.filter(user=user).values_list("team__slug", "role"))


def test_keycloak_groups_make_a_member_then_a_lead_who_approves_then_nobody(
    world, live_server, browser, keycloak, settings
):
    sso_on(settings, keycloak)
    base = live_server.url
    keycloak.user_groups_set("vera", ["/teams/vision"])

    page = sso_sign_in(browser, base, "vera")
    expect(page.locator(".who")).to_have_text("vera@example.com")
    vera = User.objects.get(email="vera@example.com")
    assert not vera.has_usable_password(), "users made by single sign-on have no portal password"
    assert (vera.first_name, vera.last_name) == ("Vera", "Mover")
    assert memberships(vera) == {"vision": Membership.Role.MEMBER}
    expect(page.get_by_role("link", name="New request")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("^Inbox"))).to_have_count(0)
    screenshot(page, "sso-member")

    # alice (a local account of the same team) asks for GPUs; vera, made a lead in Keycloak, decides.
    req = factories.request(world.alice, world.vision, world.a100)
    keycloak.user_groups_set("vera", ["/teams/vision/leads"])
    lead = sso_sign_in(browser, base, "vera")
    assert memberships(vera) == {"vision": Membership.Role.LEAD}
    lead.get_by_role("link", name=re.compile("^Inbox")).click()
    item = lead.locator(f"#inbox-item-{req.pk}")
    expect(item).to_contain_text("GPUs granted after this")
    item.get_by_label("Comment").fill("Approved by the lead Keycloak says I am")
    item.get_by_role("button", name=f"Approve #{req.pk}").click()
    expect(item).to_contain_text("it now awaits a platform admin")
    decision = req.decisions.get()
    assert (decision.approver, decision.stage, decision.decision) == (vera, "lead", "approve")
    screenshot(lead, "sso-lead-approved")

    keycloak.user_groups_set("vera", [])
    gone = sso_sign_in(browser, base, "vera")
    assert memberships(vera) == {}
    expect(gone.get_by_role("link", name="New request")).to_have_count(0)
    assert gone.goto("/team/vision/").status == 404

    changes = AuditEvent.objects.filter(object_type="quotas.membership").order_by("id")
    vera_changes = [(e.action, e.before, e.after) for e in changes if e.object_repr.startswith(vera.username)]
    assert vera_changes == [
        ("membership.set", None, {"role": "member"}),
        ("membership.set", {"role": "member"}, {"role": "lead"}),
        ("membership.removed", {"role": "lead"}, None),
    ]
    assert all(e.message.startswith("Single sign-on") and e.actor is None for e in changes if e.team)
    assert AuditEvent.objects.filter(action="user.created", object_id=str(vera.pk)).count() == 1


def test_platform_roles_come_from_groups_and_local_accounts_stay_local(
    world, live_server, browser, keycloak, settings
):
    sso_on(settings, keycloak)
    base = live_server.url
    pat = sso_sign_in(browser, base, "pat")
    user = User.objects.get(email="pat@example.com")
    assert (user.is_platform_admin, user.is_auditor, user.is_staff, user.is_superuser) == (
        True,
        False,
        False,
        False,
    )
    expect(pat.get_by_role("link", name="Clusters")).to_be_visible()
    role_change = AuditEvent.objects.get(action="user.roles_set", object_id=str(user.pk))
    assert role_change.after == {"is_platform_admin": True, "is_auditor": False}

    # A break-glass account with a password and the same e-mail as a Keycloak user: single sign-on does
    # not take it over, and its password keeps working.
    factories.user("carol-local", email="carol@example.com", is_platform_admin=True)
    refused = sso_sign_in(browser, base, "carol", lands_on="/login/")
    expect(refused.get_by_role("status")).to_contain_text(
        "carol@example.com belongs to a local portal account, which signs in with its password only"
    )
    assert not User.objects.filter(username="carol@example.com").exists()
    local = User.objects.get(username="carol-local")
    assert local.is_platform_admin and not Membership.objects.filter(user=local).exists()
    refused.get_by_label("Username").fill("carol-local")
    refused.get_by_label("Password").fill("pw")
    refused.get_by_role("button", name="Sign in").click()
    refused.wait_for_url(f"{base}/")


def test_with_single_sign_on_off_its_pages_are_not_there(db, client):
    assert "organisation account" not in client.get("/login/").content.decode()
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
