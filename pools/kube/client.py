"""One reusable API connection per cluster, built from the cluster's stored (encrypted) credentials.

- Every request has a timeout: the kubernetes REST layer sends `timeout=None` (wait forever) unless a
  call passes `_request_timeout`, so the connection fills in DEFAULT_TIMEOUT. Watches must pass their
  own `_request_timeout` (longer than their server-side `timeout_seconds`).
- urllib3 retries with exponential backoff and jitter: connection failures for every verb (nothing
  was sent), 429/5xx answers and read timeouts only for idempotent verbs.
- API discovery (what the DynamicClient needs to map apiVersion/kind to a path) runs once per
  connection, lazily, on first use inside a translated call, and is cached.
- Credentials never leave this module in any message or repr.
"""

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from urllib3.util.retry import Retry

from pools.kube.errors import InvalidKubeconfig, translated


class ClusterAccess(Protocol):
    """What the cluster layer needs of a cluster record: a name for messages, a key for the connection
    cache (0 until saved) and the credentials, or `in_cluster` for the cluster the portal runs in (its
    own ServiceAccount). The portal's Cluster model satisfies it."""

    pk: int | None
    name: str
    api_url: str
    kubeconfig: str
    token: str
    ca_data: str
    in_cluster: bool


# --- the cluster the portal runs in ---------------------------------------------------------------
# The kubelet mounts the pod's ServiceAccount token and the cluster CA here and rotates the token in
# place; the apiserver's address comes from the environment every pod gets.
SERVICE_ACCOUNT_DIR_ENV = "PORTAL_SERVICE_ACCOUNT_DIR"
DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _service_account_dir() -> Path:
    return Path(os.environ.get(SERVICE_ACCOUNT_DIR_ENV) or DEFAULT_SERVICE_ACCOUNT_DIR)


def in_cluster_refusal() -> str | None:
    """Why the portal cannot use the cluster it runs in, or None when it can."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return (
            "The portal is not running inside a Kubernetes pod (KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT are not set)."
        )
    folder = _service_account_dir()
    for name in ("token", "ca.crt"):
        if not (folder / name).is_file():
            return (
                f"The pod has no ServiceAccount {name} at {folder / name} "
                "(is automountServiceAccountToken off?)."
            )
    return None


def in_cluster_server() -> str:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _in_cluster_token() -> str:
    try:
        return (_service_account_dir() / "token").read_text().strip()
    except OSError:
        return ""


# Connect fast, read long enough for a big list; watches pass their own timeout.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
DEFAULT_TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)
# Server-side apply (PATCH with force), PUT with a resourceVersion and DELETE are idempotent; POST is
# not, so a 5xx or a lost answer to a create is never replayed by the transport.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})
RETRY = Retry(
    total=3,
    connect=2,
    read=1,
    status=3,
    # TLS failures and the like do not heal by retrying.
    other=0,
    redirect=0,
    backoff_factor=0.3,
    backoff_jitter=0.2,
    backoff_max=5,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=IDEMPOTENT_METHODS,
    respect_retry_after_header=True,
    raise_on_status=False,
)

# Inline credentials only. `exec` and `auth-provider` would run a program on the portal's host and
# the file-path variants would read the portal host's files (and send them to the cluster).
_USER_KEYS = frozenset({"token", "client-certificate-data", "client-key-data"})
_CLUSTER_KEYS = frozenset({"server", "certificate-authority-data", "tls-server-name", "extensions"})


def _parse(text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidKubeconfig(
            f"The kubeconfig is not valid YAML{where}.", reason="InvalidKubeconfig"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidKubeconfig("The kubeconfig is not a YAML mapping.", reason="InvalidKubeconfig")
    return doc


def _current(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of the current context."""

    def named(section: str, name: object) -> dict[str, Any]:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(section.rstrip("s"))
                if isinstance(body, dict):
                    return body
        raise InvalidKubeconfig(
            f"The kubeconfig has no usable entry in `{section}` for the current context.",
            reason="InvalidKubeconfig",
        )

    current = doc.get("current-context")
    if not current:
        raise InvalidKubeconfig("The kubeconfig has no current-context.", reason="InvalidKubeconfig")
    context = named("contexts", current)
    return named("clusters", context.get("cluster")), named("users", context.get("user"))


def kubeconfig_check(text: str) -> dict[str, Any]:
    """Parse a kubeconfig and check that its current context uses inline credentials only.

    Returns the parsed document. Messages name keys and context names, never values.
    """
    doc = _parse(text)
    cluster, user = _current(doc)
    # Credentials only ever travel over verified TLS: plain http or skipped verification would hand
    # the bearer token to anyone on the path.
    if not str(cluster.get("server", "")).startswith("https://"):
        raise InvalidKubeconfig(
            "The kubeconfig's cluster needs an https:// server address; "
            "plain http would expose the credentials.",
            reason="InvalidKubeconfig",
        )
    for section, entry, allowed in (("user", user, _USER_KEYS), ("cluster", cluster, _CLUSTER_KEYS)):
        refused = sorted(set(entry) - allowed)
        if refused:
            raise InvalidKubeconfig(
                f"The kubeconfig's {section} uses {', '.join(refused)}: the portal only accepts inline "
                "credentials (token, or client-certificate-data with client-key-data) and "
                "certificate-authority-data.",
                reason="InvalidKubeconfig",
            )
    if not (user.get("token") or (user.get("client-certificate-data") and user.get("client-key-data"))):
        raise InvalidKubeconfig(
            "The kubeconfig's user has no credentials (token, or client-certificate-data with "
            "client-key-data).",
            reason="InvalidKubeconfig",
        )
    return doc


def kubeconfig_server(text: str) -> str:
    """The API server address of the kubeconfig's current context (after kubeconfig_check)."""
    cluster, _ = _current(kubeconfig_check(text))
    return str(cluster["server"])


def _with_default_timeout(request: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(request)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("_request_timeout"):
            kwargs["_request_timeout"] = DEFAULT_TIMEOUT
        return request(*args, **kwargs)

    return wrapper


class Connection:
    """An API client for one cluster. The DynamicClient (and its discovery) is built on first use."""

    def __init__(
        self, *, name: str, api: k8s.ApiClient, host: str, cache_file: str, ca_file: str = ""
    ) -> None:
        self.name = name
        self.api = api
        self.host = host
        self._cache_file = cache_file
        self._ca_file = ca_file
        self._dynamic: DynamicClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Connection {self.name} {self.host}>"

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def dynamic(self) -> DynamicClient:
        with self._lock:
            if self._dynamic is None:
                # Discovery talks to the cluster: callers outside ops.call still get typed errors.
                with translated(self.name):
                    self._dynamic = DynamicClient(self.api, cache_file=self._cache_file)
            return self._dynamic

    def close(self) -> None:
        self.api.close()
        if self._ca_file:
            Path(self._ca_file).unlink(missing_ok=True)


_cache: dict[tuple[int, str], Connection] = {}
_cache_pid = os.getpid()
_lock = threading.Lock()
_discovery_dir = tempfile.mkdtemp(prefix="gpu-portal-discovery-")


def _configuration(cluster: ClusterAccess) -> tuple[k8s.Configuration, str]:
    configuration = k8s.Configuration()
    ca_file = ""
    if cluster.in_cluster:
        if refusal := in_cluster_refusal():
            raise InvalidKubeconfig(refusal, reason="NotInCluster")
        configuration.host = in_cluster_server()
        configuration.api_key = {"authorization": _in_cluster_token()}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        # The mounted CA file, not a copy: it is the kubelet's to update.
        configuration.ssl_ca_cert = str(_service_account_dir() / "ca.crt")
    elif cluster.kubeconfig:
        doc = kubeconfig_check(cluster.kubeconfig)
        try:
            loader = k8s_config.kube_config.KubeConfigLoader(config_dict=doc)
            loader.load_and_set(configuration)
        except (k8s_config.ConfigException, TypeError, KeyError, AttributeError, ValueError):
            # The loader's messages can quote the file (and so a key); say what is wrong without
            # any of it, and drop the original from the chain for the same reason.
            raise InvalidKubeconfig(
                "The kubeconfig's credentials cannot be loaded (e.g. certificate data that is not base64).",
                reason="InvalidKubeconfig",
            ) from None
    elif cluster.api_url and cluster.token:
        configuration.host = cluster.api_url.rstrip("/")
        configuration.api_key = {"authorization": cluster.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        if cluster.ca_data:
            handle = tempfile.NamedTemporaryFile(prefix="gpu-portal-ca-", suffix=".crt", delete=False)  # noqa: SIM115
            with handle:
                handle.write(cluster.ca_data.encode())
            ca_file = configuration.ssl_ca_cert = handle.name
        # Without a CA bundle the system trust store applies; TLS verification is never switched off
        # implicitly, since a bearer token sent to an impostor is a stolen token.
    else:
        raise InvalidKubeconfig(
            "The cluster has no credentials: upload a kubeconfig, or give the API URL with a token.",
            reason="NoCredentials",
        )
    configuration.retries = RETRY
    return configuration, ca_file


def _fingerprint(cluster: ClusterAccess) -> str:
    # The mounted token is rotated by the kubelet: a new token makes a new connection.
    in_cluster = f"in-cluster:{_in_cluster_token()}" if cluster.in_cluster else ""
    parts = [cluster.kubeconfig, cluster.api_url, cluster.token, cluster.ca_data, in_cluster]
    material = "\0".join(part or "" for part in parts)
    return hashlib.sha256(material.encode()).hexdigest()


def connect(cluster: ClusterAccess) -> Connection:
    """The cached connection for this cluster; a credential change makes a new one.

    Does no network I/O; raises InvalidKubeconfig when the credentials cannot make a client.
    """
    global _cache_pid
    key = (cluster.pk or 0, _fingerprint(cluster))
    with _lock:
        if _cache_pid != os.getpid():
            # A forked worker must not share the parent's sockets; the parent still owns them.
            _cache.clear()
            _cache_pid = os.getpid()
        conn = _cache.get(key)
        if conn is None:
            # A saved cluster has one live connection: the one for its current credentials. Unsaved
            # clusters (being registered) only share pk 0, so they never evict each other.
            for stale in [k for k in _cache if cluster.pk and k[0] == cluster.pk]:
                _cache.pop(stale).close()
            configuration, ca_file = _configuration(cluster)
            api = k8s.ApiClient(configuration)
            api.rest_client.request = _with_default_timeout(api.rest_client.request)
            conn = _cache[key] = Connection(
                name=cluster.name,
                api=api,
                host=configuration.host,
                cache_file=f"{_discovery_dir}/{key[1][:16]}.json",
                ca_file=ca_file,
            )
        return conn


def forget(cluster: ClusterAccess) -> None:
    """Drop the cached connection (after a credential change, or for a cluster that was never saved)."""
    with _lock:
        if cluster.pk:
            stale = [k for k in _cache if k[0] == cluster.pk]
        else:
            stale = [k for k in [(0, _fingerprint(cluster))] if k in _cache]
        for key in stale:
            _cache.pop(key).close()
