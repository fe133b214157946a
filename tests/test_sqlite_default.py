"""`make run`'s zero-setup database is SQLite: the dashboard and a pool's page, their live and history
regions and their polls answer there too (the polls' versions are PostgreSQL's; on SQLite every
poll renders). A process of its own: the suite's database is PostgreSQL."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import django
django.setup()
from django.core.management import call_command
from django.test import Client
from pools.models import NodePool
from portal.models import User

call_command("migrate", verbosity=0)
call_command("seed_demo", verbosity=0)
pool = NodePool.objects.order_by("pk").first()
dashboard, page = "/utilisation/", f"/utilisation/pools/{pool.pk}/"
for name in ("admin", "alice"):
    client = Client()
    client.force_login(User.objects.get(username=name))
    for path, target in ((dashboard, None), (dashboard, "utilisation-live"), (page, None),
                         (page, "pool-live"), (page + "?range=1h", "pool-history")):
        headers = {} if target is None else {
            "HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": target, "HTTP_HX_CURRENT_URL": "http://x" + path,
        }
        for etag in (None, 'W/"an-old-version"'):
            extra = {} if etag is None else {"HTTP_IF_NONE_MATCH": etag}
            response = client.get(path, **headers, **extra)
            assert response.status_code == 200, (name, path, target, etag, response.status_code)
            assert "ETag" not in response.headers, (path, target)
            assert pool.name.encode() in response.content or target == "pool-history", (path, target)
print("ok")
"""


def test_the_dashboard_answers_on_sqlite(tmp_path: Path) -> None:
    # Only what `make run` would set: the portal's own variables are left out, the database is a new file.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "DATABASE_URL", "DJANGO_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}", DJANGO_SETTINGS_MODULE="portal.settings.base"
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
