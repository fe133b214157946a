"""Reads and writes against a cluster. Every call maps failures onto pools.kube.errors."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from pools.kube.client import CONNECT_TIMEOUT, READ_TIMEOUT, Connection, connect
from pools.kube.errors import KubeError, NotFound, PermanentKubeError, Unreachable, from_api_exception

if TYPE_CHECKING:
    from pools.models import Cluster

# The one field manager the portal applies with: every field it owns is attributed to it, so a hand
# edit shows up as a conflict and a re-apply restores the portal's value.
FIELD_MANAGER = "gpu-capacity-portal"
TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)

T = TypeVar("T")


@contextmanager
def translated_errors(cluster: "Cluster") -> Iterator[None]:
    try:
        yield
    except KubeError:
        raise
    except ApiException as exc:  # DynamicApiError included: it subclasses ApiException
        raise from_api_exception(exc) from exc
    except ResourceNotFoundError as exc:
        raise PermanentKubeError(f"The cluster does not serve this API: {exc}", reason="NoSuchAPI") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        # Transport errors name the host and port, never the credentials.
        raise Unreachable(
            f"Cluster {cluster.name} is unreachable: {type(exc).__name__}", reason="Unreachable"
        ) from exc


def call(cluster: "Cluster", fn: Callable[[Connection], T]) -> T:
    with translated_errors(cluster):
        return fn(connect(cluster))


def _resource(conn: Connection, api_version: str, kind: str) -> Any:
    return conn.dynamic.resources.get(api_version=api_version, kind=kind)


def apply(cluster: "Cluster", manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `manifest`, taking ownership of its fields; returns the live object."""
    meta = manifest["metadata"]

    def run(conn: Connection) -> dict[str, Any]:
        resource = _resource(conn, manifest["apiVersion"], manifest["kind"])
        live = resource.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            _request_timeout=TIMEOUT,
        )
        return live.to_dict()

    return call(cluster, run)


def get(
    cluster: "Cluster", api_version: str, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any] | None:
    def run(conn: Connection) -> dict[str, Any]:
        resource = _resource(conn, api_version, kind)
        return resource.get(name=name, namespace=namespace, _request_timeout=TIMEOUT).to_dict()

    try:
        return call(cluster, run)
    except NotFound:
        return None


def list_objects(
    cluster: "Cluster",
    api_version: str,
    kind: str,
    *,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> list[dict[str, Any]]:
    def run(conn: Connection) -> list[dict[str, Any]]:
        resource = _resource(conn, api_version, kind)
        result = resource.get(
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            _request_timeout=TIMEOUT,
        )
        return result.to_dict().get("items", [])

    return call(cluster, run)


def delete(cluster: "Cluster", api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete an object; False when it was already gone (deleting is idempotent)."""

    def run(conn: Connection) -> None:
        resource = _resource(conn, api_version, kind)
        resource.delete(name=name, namespace=namespace, _request_timeout=TIMEOUT)

    try:
        call(cluster, run)
    except NotFound:
        return False
    return True
