"""Single sign-on glue for mozilla-django-oidc: how users are named. The rest lives in portal/sso.py."""

from typing import Any


def username_from_email(email: str, claims: dict[str, Any]) -> str:
    """Users signing in through the identity provider are named by their e-mail address.

    Readable in approval histories, unlike the library's default hash, and unique because the
    backend matches returning users by that same address.
    """
    return email.strip().lower()
