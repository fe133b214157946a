"""A real Keycloak for the single sign-on tests: started once per session from scripts/keycloak.sh.

The instance runs in dev mode on a free port of 127.0.0.1 with an in-memory database and the realm of
testbed/gpu-portal-realm.json, so every session starts from that file. When it cannot start, the tests that
need it fail with Keycloak's log: they are never skipped.
"""

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
REALM = "gpu-portal"
CLIENT_ID = "gpu-portal"
CLIENT_SECRET = "gpu-portal-demo-secret"  # the realm file's; a test-and-demo value only
START_SECONDS = 900  # a cold cache fetches and builds first (minutes on 2 busy cores), then starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Keycloak:
    url: str
    admin_password: str
    discovery: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{REALM}"

    def portal_settings(self) -> dict[str, Any]:
        """The OIDC_* settings the portal reads from PORTAL_OIDC_* in production, for this instance."""
        return {
            "PORTAL_OIDC_ENABLED": True,
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": self.discovery["authorization_endpoint"],
            "OIDC_OP_TOKEN_ENDPOINT": self.discovery["token_endpoint"],
            "OIDC_OP_USER_ENDPOINT": self.discovery["userinfo_endpoint"],
            "OIDC_OP_JWKS_ENDPOINT": self.discovery["jwks_uri"],
            "OIDC_RP_SIGN_ALGO": "RS256",
            "OIDC_RP_SCOPES": "openid email profile",
            "OIDC_CREATE_USER": True,
        }

    # --- the admin REST API, to move users between groups as an identity-provider admin would ---

    def _admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        token = requests.post(
            f"{self.url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": "admin",
                "password": self.admin_password,
            },
            timeout=30,
        )
        token.raise_for_status()
        response = requests.request(
            method,
            f"{self.url}/admin/realms/{REALM}{path}",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
            **kwargs,
        )
        response.raise_for_status()
        return response

    def user_id(self, username: str) -> str:
        (user,) = self._admin("GET", "/users", params={"username": username, "exact": "true"}).json()
        return user["id"]

    def user_groups(self, username: str) -> list[str]:
        return sorted(g["path"] for g in self._admin("GET", f"/users/{self.user_id(username)}/groups").json())

    def user_groups_set(self, username: str, paths: list[str]) -> None:
        user = self.user_id(username)
        for group in self._admin("GET", f"/users/{user}/groups").json():
            if group["path"] not in paths:
                self._admin("DELETE", f"/users/{user}/groups/{group['id']}")
        for path in paths:
            group = self._admin("GET", f"/group-by-path{path}").json()
            self._admin("PUT", f"/users/{user}/groups/{group['id']}")
        assert self.user_groups(username) == sorted(paths)


def _log_tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    state = tmp_path_factory.mktemp("keycloak")
    log = state / "keycloak.log"
    port = _free_port()
    admin_password = secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
        "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
    }
    with log.open("w") as out:
        # A session of its own: kc.sh runs Java as a child, and the whole group is stopped at the end.
        process = subprocess.Popen(
            [
                "bash",
                str(REPO / "scripts" / "keycloak.sh"),
                "start",
                "--port",
                str(port),
                "--state-dir",
                str(state),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    instance = Keycloak(url=f"http://127.0.0.1:{port}", admin_password=admin_password)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"Keycloak exited with code {process.returncode} before answering; its log ({log}):\n"
                    + _log_tail(log),
                    pytrace=False,
                )
            try:
                answer = requests.get(f"{instance.issuer}/.well-known/openid-configuration", timeout=5)
                if answer.status_code == 200:
                    instance.discovery = answer.json()
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Keycloak did not answer within {START_SECONDS} s; its log ({log}):\n" + _log_tail(log),
                    pytrace=False,
                )
            time.sleep(1)
        yield instance
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
