"""The session store, and how a request's user comes from it, in one query.

Every page and every poll of a signed-in user reads the session and then the user it names: two
round trips before the view runs, each costing more under load than the query itself. The session
row here names its user (portal.models.Session.user, set whenever the session is saved), so the one
read of the session brings the user along, by a statement compiled once (portal.statements: building
the query cost more than PostgreSQL takes to answer it). AuthenticationMiddleware takes that user
when the session still verifies for them and asks Django's own get_user otherwise, so every rule of
Django's (the backend still configured, the password hash, the fallback keys) holds as before.
SESSION_ENGINE names this module, and MIDDLEWARE its middleware.
"""

from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import middleware as auth_middleware
from django.contrib.sessions.backends import db
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.functional import SimpleLazyObject

from portal import statements


class SessionStore(db.SessionStore):
    # The user read with the session row; None until a row was read or when it names nobody.
    joined_user: Any = None

    @classmethod
    def get_model_class(cls) -> Any:
        from portal.models import Session

        return Session

    def create_model_instance(self, data: dict[str, Any]) -> Any:
        session = super().create_model_instance(data)
        user_id = data.get(auth.SESSION_KEY)
        session.user_id = None if user_id is None else auth.get_user_model()._meta.pk.to_python(user_id)
        return session

    def _get_session_from_db(self) -> Any:
        model = self.model
        found = statements.bound_instances(
            ("session by key", model._meta.label),
            lambda key: model.objects.filter(session_key=key).select_related("user"),
            key=self.session_key,
        )
        # Expiry is compared here rather than in SQL (a moment is not a bound value); the key is
        # the table's primary key, so the row read is the same one.
        if found and found[0].expire_date > timezone.now():
            self.joined_user = found[0].user
            return found[0]
        self._session_key = None
        return None


def _joined_user(request: HttpRequest) -> Any:
    """The user the session row was read with, when Django's get_user would return that same user
    on its first try: the session names them and a configured backend, they are active, and the
    session's hash is their current one. None sends the request to Django's get_user."""
    session = request.session
    try:
        user_id = session[auth.SESSION_KEY]  # reads the session row, and with it the user
        backend = session[auth.BACKEND_SESSION_KEY]
        session_hash = session[auth.HASH_SESSION_KEY]
    except KeyError:
        return None
    user = getattr(session, "joined_user", None)
    if (
        user is None
        or str(user.pk) != str(user_id)
        or backend not in settings.AUTHENTICATION_BACKENDS
        or not user.is_active
        or not constant_time_compare(session_hash, user.get_session_auth_hash())
    ):
        return None
    return user


def _user(request: HttpRequest) -> Any:
    if not hasattr(request, "_cached_user"):
        request._cached_user = _joined_user(request) or auth.get_user(request)  # type: ignore[attr-defined]
    return request._cached_user  # type: ignore[attr-defined]


class AuthenticationMiddleware(auth_middleware.AuthenticationMiddleware):
    """Django's, with request.user taken from the session's own read when it verifies."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _user(request))
