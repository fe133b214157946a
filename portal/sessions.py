"""The database session store with its one read compiled once (portal.statements): every page and
every poll of a signed-in user reads the session first, and building that query cost more than
PostgreSQL takes to answer it. SESSION_ENGINE names this module."""

from typing import Any

from django.contrib.sessions.backends import db
from django.utils import timezone

from portal import statements


class SessionStore(db.SessionStore):
    def _get_session_from_db(self) -> Any:
        model = self.model
        found = statements.bound_instances(
            ("session by key", model._meta.label),
            lambda key: model.objects.filter(session_key=key),
            key=self.session_key,
        )
        # Expiry is compared here rather than in SQL (a moment is not a bound value); the key is
        # the table's primary key, so the row read is the same one.
        if found and found[0].expire_date > timezone.now():
            return found[0]
        self._session_key = None
        return None
