"""One reusable API connection per cluster, built from the cluster's stored (encrypted) credentials."""

import hashlib
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from urllib3.util.retry import Retry

from pools.kube.errors import PermanentKubeError

if TYPE_CHECKING:
    from pools.models import Cluster

# Connect fast, read long enough for a big list; watches pass their own timeout.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# Only idempotent verbs are retried by the transport: server-side apply (PATCH) and DELETE are
# idempotent, POST is not.
RETRY = Retry(
    total=3,
    connect=2,
    read=2,
    status=3,
    backoff_factor=0.3,
    backoff_jitter=0.2,
    backoff_max=5,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
    respect_retry_after_header=True,
    raise_on_status=False,
)


@dataclass
class Connection:
    api: k8s.ApiClient
    dynamic: DynamicClient
    host: str

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)


_cache: dict[tuple[int, str], Connection] = {}
_lock = threading.Lock()
_discovery_dir = tempfile.mkdtemp(prefix="gpu-portal-discovery-")


def _configuration(cluster: "Cluster") -> k8s.Configuration:
    configuration = k8s.Configuration()
    if cluster.kubeconfig:
        try:
            loader = k8s_config.kube_config.KubeConfigLoader(config_dict=yaml.safe_load(cluster.kubeconfig))
            loader.load_and_set(configuration)
        except (yaml.YAMLError, k8s_config.ConfigException, TypeError, KeyError, AttributeError) as exc:
            # The loader's messages can quote the file; say what is wrong without echoing any of it.
            raise PermanentKubeError(
                "The stored kubeconfig cannot be used: it is not a valid kubeconfig with a current context.",
                reason="InvalidKubeconfig",
            ) from exc
    elif cluster.api_url and cluster.token:
        configuration.host = cluster.api_url
        configuration.api_key = {"authorization": cluster.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        if cluster.ca_data:
            ca_file = tempfile.NamedTemporaryFile(prefix="gpu-portal-ca-", suffix=".crt", delete=False)  # noqa: SIM115
            ca_file.write(cluster.ca_data.encode())
            ca_file.close()
            configuration.ssl_ca_cert = ca_file.name
        else:
            configuration.verify_ssl = False
    else:
        raise PermanentKubeError(
            "The cluster has no credentials: upload a kubeconfig, or give the API URL with a token.",
            reason="NoCredentials",
        )
    configuration.retries = RETRY
    return configuration


def _fingerprint(cluster: "Cluster") -> str:
    parts = [cluster.kubeconfig, cluster.api_url, cluster.token, cluster.ca_data]
    material = "\0".join(part or "" for part in parts)
    return hashlib.sha256(material.encode()).hexdigest()


def connect(cluster: "Cluster") -> Connection:
    """The cached connection for this cluster; a credential change makes a new one."""
    key = (cluster.pk or 0, _fingerprint(cluster))
    with _lock:
        conn = _cache.get(key)
        if conn is None:
            for stale in [k for k in _cache if k[0] == key[0]]:
                _cache.pop(stale).api.close()
            configuration = _configuration(cluster)
            api = k8s.ApiClient(configuration)
            dynamic = DynamicClient(api, cache_file=f"{_discovery_dir}/{key[1][:16]}.json")
            conn = _cache[key] = Connection(api=api, dynamic=dynamic, host=configuration.host)
        return conn


def forget(cluster: "Cluster") -> None:
    with _lock:
        for stale in [k for k in _cache if k[0] == (cluster.pk or 0)]:
            _cache.pop(stale).api.close()
