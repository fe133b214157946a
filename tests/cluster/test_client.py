"""The client's transport behaviour against a scripted local HTTP server: retries, timeouts, typed
errors, and credentials that never show up in messages, reprs or logs."""

import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pools.kube import client, ops
from pools.kube.errors import (
    Forbidden,
    Invalid,
    InvalidKubeconfig,
    PermanentKubeError,
    TemporaryKubeError,
    Unauthorized,
    Unreachable,
)
from pools.models import Cluster

SECRET = "s3cr3t-token-value-0123456789"


class Script:
    """Answers per (method, path): a list of (status, body, headers) consumed in order; the last one
    repeats. `hang` makes the server accept the request and never answer."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, dict | str, dict]]] = {}
        self.seen: list[tuple[str, str, str, str]] = []  # method, path, Authorization, query
        self.hang = threading.Event()
        self.release = threading.Event()

    def on(self, method: str, path: str, *answers: tuple) -> None:
        self.answers[(method, path)] = [(a[0], a[1], a[2] if len(a) > 2 else {}) for a in answers]

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.seen if (m, p) == (method, path))


@pytest.fixture
def server() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path, _, query = self.path.partition("?")
            path = path.rstrip("/") or "/"
            script.seen.append((self.command, path, self.headers.get("Authorization", ""), query))
            if script.hang.is_set():
                script.release.wait(10)
                return
            answers = script.answers.get((self.command, path)) or [(404, {"kind": "Status", "code": 404}, {})]
            status, body, headers = answers.pop(0) if len(answers) > 1 else answers[0]
            html = isinstance(body, str)
            payload = body.encode() if html else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if html else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    script.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same policy, shorter sleeps: the test is about which calls are retried, not how long it waits.
    monkeypatch.setattr(client, "RETRY", client.RETRY.new(backoff_factor=0.01, backoff_jitter=0.0))


def cluster_at(url: str, token: str = SECRET) -> Cluster:
    return Cluster(name="fake", api_url=url, token=token)


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


VERSION = {"gitVersion": "v1.36.1", "major": "1", "minor": "36"}


def test_idempotent_get_is_retried_on_503_and_429(server, fast_backoff):
    script, url = server
    script.on(
        "GET",
        "/version",
        (503, status(503, "ServiceUnavailable", "busy")),
        (429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "0"}),
        (200, VERSION),
    )
    cluster = cluster_at(url)
    assert ops.server_version(cluster) == "v1.36.1"
    assert script.count("GET", "/version") == 3
    # Every attempt carried the bearer token.
    assert {auth for _, _, auth, _ in script.seen} == {f"Bearer {SECRET}"}
    client.forget(cluster)


def test_get_gives_up_after_the_retry_budget_with_a_temporary_error(server, fast_backoff):
    script, url = server
    script.on("GET", "/version", (500, status(500, "InternalError", "etcd is sad")))
    cluster = cluster_at(url)
    with pytest.raises(TemporaryKubeError) as caught:
        ops.server_version(cluster)
    assert caught.value.status == 500 and caught.value.message == "etcd is sad"
    assert script.count("GET", "/version") == 1 + client.RETRY.status
    client.forget(cluster)


def test_post_is_never_retried(server, fast_backoff):
    script, url = server
    script.on("POST", "/api/v1/namespaces/default/pods", (503, status(503, "ServiceUnavailable", "busy")))
    cluster = cluster_at(url)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}
    with pytest.raises(TemporaryKubeError):
        ops.call(cluster, lambda conn: conn.core.create_namespaced_pod("default", pod))
    assert script.count("POST", "/api/v1/namespaces/default/pods") == 1
    client.forget(cluster)


def test_every_call_has_a_default_timeout_discovery_included(server, monkeypatch):
    script, url = server
    monkeypatch.setattr(client, "DEFAULT_TIMEOUT", (1.0, 0.5))
    script.hang.set()
    cluster = cluster_at(url)
    # The DynamicClient's discovery passes no timeout of its own; without the default it would
    # wait forever on a server that accepted the connection and never answered.
    with pytest.raises(Unreachable) as caught:
        ops.list_objects(cluster, "v1", "Node")
    assert "no answer before the read timeout" in caught.value.message
    with pytest.raises(Unreachable):
        ops.server_version(cluster)
    client.forget(cluster)


@pytest.mark.parametrize(
    ("code", "reason", "message", "error"),
    [
        (401, "Unauthorized", "Unauthorized", Unauthorized),
        (403, "Forbidden", 'nodes is forbidden: User "bob" cannot list resource "nodes"', Forbidden),
        (
            403,
            "Forbidden",
            'pods "p" is forbidden: exceeded quota: q, requested: requests.nvidia.com/gpu=2',
            Invalid,
        ),
        (422, "Invalid", 'Pod "p" is invalid: spec.containers: Required value', Invalid),
    ],
)
def test_status_codes_become_typed_errors(server, code, reason, message, error):
    script, url = server
    script.on("GET", "/version", (code, status(code, reason, message)))
    cluster = cluster_at(url)
    with pytest.raises(error) as caught:
        ops.server_version(cluster)
    assert type(caught.value) is error
    if error is not Unauthorized:
        assert caught.value.message == message
    client.forget(cluster)


def test_discovery_runs_once_per_connection_and_lists_are_paged(server):
    script, url = server
    node_resource = {
        "name": "nodes",
        "singularName": "node",
        "namespaced": False,
        "kind": "Node",
        "verbs": ["list"],
    }
    script.on("GET", "/version", (200, VERSION))
    script.on("GET", "/api", (200, {"kind": "APIVersions", "versions": ["v1"]}))
    script.on("GET", "/apis", (200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
    script.on(
        "GET",
        "/api/v1",
        (200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [node_resource]}),
    )
    page = {"kind": "NodeList", "apiVersion": "v1"}
    script.on(
        "GET",
        "/api/v1/nodes",
        (200, {**page, "metadata": {"continue": "next-page"}, "items": [{"metadata": {"name": "a"}}]}),
        (200, {**page, "metadata": {}, "items": [{"metadata": {"name": "b"}}]}),
        (200, {**page, "metadata": {}, "items": [{"metadata": {"name": "c"}}]}),
    )
    cluster = cluster_at(url)
    assert [n["metadata"]["name"] for n in ops.list_objects(cluster, "v1", "Node")] == ["a", "b"]
    assert [n["metadata"]["name"] for n in ops.list_objects(cluster, "v1", "Node")] == ["c"]
    discovery = [p for m, p, _, _ in script.seen if p in ("/api", "/apis", "/api/v1")]
    assert discovery and sorted(discovery) == sorted(set(discovery)), "discovery ran more than once"
    queries = [q for _, p, _, q in script.seen if p == "/api/v1/nodes"]
    assert "continue=next-page" in queries[1] and all(f"limit={ops.PAGE_SIZE}" in q for q in queries)
    client.forget(cluster)


@pytest.mark.parametrize("answer", [(200, "<html>welcome</html>"), (404, "<html>no such page</html>")])
def test_a_server_that_is_not_kubernetes_is_named_as_such(server, answer):
    script, url = server
    script.on("GET", "/version", answer)
    cluster = cluster_at(url)
    with pytest.raises(PermanentKubeError) as caught:
        ops.server_version(cluster)
    assert caught.value.reason == "NotKubernetes"
    assert "is the address a Kubernetes API server?" in caught.value.message
    client.forget(cluster)


def test_the_token_is_in_no_message_repr_or_log(server, caplog):
    script, url = server
    script.on("GET", "/version", (401, status(401, "Unauthorized", "Unauthorized")))
    caplog.set_level(logging.DEBUG)
    cluster = cluster_at(url)
    conn = client.connect(cluster)
    with pytest.raises(Unauthorized) as caught:
        ops.server_version(cluster)
    rendered = [
        str(caught.value),
        repr(caught.value),
        "".join(traceback.format_exception(caught.value)),
        repr(conn),
        repr(cluster),
        str(cluster),
        caplog.text,
    ]
    assert script.seen, "the request reached the server"
    assert not [text for text in rendered if SECRET in text]
    client.forget(cluster)


KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: USER}]
"""


@pytest.mark.parametrize(
    ("user", "refused"),
    [
        ('{exec: {command: /bin/sh, args: ["-c", "echo SECRET"]}}', "exec"),
        ("{auth-provider: {name: oidc, config: {id-token: SECRET}}}", "auth-provider"),
        ("{tokenFile: /etc/SECRET}", "tokenFile"),
        ("{client-certificate: /tmp/c.crt, client-key: /tmp/SECRET.key}", "client-certificate, client-key"),
        ("{username: admin, password: SECRET}", "password, username"),
    ],
)
def test_kubeconfigs_that_would_run_programs_or_read_files_are_refused(user, refused):
    text = KUBECONFIG.replace("USER", user.replace("SECRET", SECRET))
    with pytest.raises(InvalidKubeconfig) as caught:
        client.connect(Cluster(name="k", kubeconfig=text))
    assert f"user uses {refused}" in caught.value.message
    assert SECRET not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    "text",
    [
        f"users: [{{name: u, user: {{token: {SECRET}}}}}]\n  : : [broken",
        f"- token: {SECRET}",
        KUBECONFIG.replace("current-context: c", "current-context: nope").replace(
            "USER", f"{{token: {SECRET}}}"
        ),
        KUBECONFIG.replace("USER", "{}"),
        KUBECONFIG.replace("USER", f"{{client-certificate-data: '{SECRET}', client-key-data: '{SECRET}'}}"),
    ],
    ids=["not-yaml", "not-a-mapping", "no-such-context", "no-credentials", "bad-certificate-data"],
)
def test_broken_kubeconfigs_give_a_clear_error_without_their_content(text, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidKubeconfig) as caught:
        client.connect(Cluster(name="k", kubeconfig=text))
    assert caught.value.message.startswith("The kubeconfig")
    assert SECRET not in "".join(traceback.format_exception(caught.value)) + caplog.text


def test_credential_change_makes_a_new_connection(server):
    _, url = server
    cluster = Cluster(name="k", api_url=url, token="one")
    first = client.connect(cluster)
    assert client.connect(cluster) is first
    cluster.token = "two"
    assert client.connect(cluster) is not first
    client.forget(cluster)


@pytest.mark.parametrize(
    ("cluster_entry", "expected"),
    [
        ('{server: "http://127.0.0.1:6443"}', "needs an https:// server address"),
        (
            '{server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}',
            "cluster uses insecure-skip-tls-verify",
        ),
    ],
    ids=["plain-http", "skip-tls-verify"],
)
def test_kubeconfigs_that_would_send_the_token_unprotected_are_refused(cluster_entry, expected):
    text = KUBECONFIG.replace("USER", f"{{token: {SECRET}}}").replace(
        '{server: "https://127.0.0.1:6443"}', cluster_entry
    )
    with pytest.raises(InvalidKubeconfig) as caught:
        client.connect(Cluster(name="k", kubeconfig=text))
    assert expected in caught.value.message
    assert SECRET not in "".join(traceback.format_exception(caught.value))
