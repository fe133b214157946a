"""Reads and writes against a cluster. Every call maps failures onto pools.kube.errors.

Calls pass no timeout of their own: the connection applies pools.kube.client.DEFAULT_TIMEOUT.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kubernetes import client as k8s

from pools.kube.client import ClusterAccess, Connection, connect
from pools.kube.errors import NotFound, PermanentKubeError, translated
from pools.kube.objects import FIELD_MANAGER

# Lists are paged so that a cluster with thousands of nodes or pods never needs one huge response.
PAGE_SIZE = 500

T = TypeVar("T")


@contextmanager
def translated_errors(cluster: ClusterAccess) -> Iterator[None]:
    with translated(cluster.name):
        yield


def call(cluster: ClusterAccess, fn: Callable[[Connection], T]) -> T:
    """Run `fn` with the cluster's connection; any failure (connecting included) is a KubeError."""
    with translated_errors(cluster):
        return fn(connect(cluster))


def _resource(conn: Connection, api_version: str, kind: str) -> Any:
    return conn.dynamic.resources.get(api_version=api_version, kind=kind)


def _json(response: Any) -> dict[str, Any]:
    # Raw JSON instead of the DynamicClient's ResourceInstance: wrapping thousands of objects in
    # attribute proxies only to turn them back into dicts is the slow part of a big list.
    return json.loads(response.data)


def apply(cluster: ClusterAccess, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `manifest`, taking ownership of its fields; returns the live object."""
    meta = manifest["metadata"]

    def run(conn: Connection) -> dict[str, Any]:
        resource = _resource(conn, manifest["apiVersion"], manifest["kind"])
        response = resource.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            serialize=False,
        )
        return _json(response)

    return call(cluster, run)


def create(cluster: ClusterAccess, manifest: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """POST `manifest` (never retried by the transport); for objects that are created, not applied,
    such as access reviews, or a pod whose admission answer matters. `dry_run` runs validation and
    admission without persisting anything (how the provisioner probes that a policy is enforced)."""

    def run(conn: Connection) -> dict[str, Any]:
        resource = _resource(conn, manifest["apiVersion"], manifest["kind"])
        response = resource.create(
            body=manifest,
            namespace=manifest["metadata"].get("namespace") if "metadata" in manifest else None,
            field_manager=FIELD_MANAGER,
            dry_run="All" if dry_run else None,
            serialize=False,
        )
        return _json(response)

    return call(cluster, run)


def get(
    cluster: ClusterAccess, api_version: str, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any] | None:
    def run(conn: Connection) -> dict[str, Any]:
        resource = _resource(conn, api_version, kind)
        return _json(resource.get(name=name, namespace=namespace, serialize=False))

    try:
        return call(cluster, run)
    except NotFound:
        return None


def list_objects(
    cluster: ClusterAccess,
    api_version: str,
    kind: str,
    *,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> list[dict[str, Any]]:
    def run(conn: Connection) -> list[dict[str, Any]]:
        resource = _resource(conn, api_version, kind)
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = _json(
                resource.get(
                    namespace=namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    limit=PAGE_SIZE,
                    _continue=token,
                    serialize=False,
                )
            )
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    return call(cluster, run)


def delete(
    cluster: ClusterAccess, api_version: str, kind: str, name: str, namespace: str | None = None
) -> bool:
    """Delete an object; False when it was already gone (deleting is idempotent)."""

    def run(conn: Connection) -> None:
        resource = _resource(conn, api_version, kind)
        resource.delete(name=name, namespace=namespace, serialize=False)

    try:
        call(cluster, run)
    except NotFound:
        return False
    return True


def server_version(cluster: ClusterAccess) -> str:
    """The apiserver's gitVersion from /version (readable without any RBAC permission)."""

    def run(conn: Connection) -> str:
        # Raw JSON: the typed VersionInfo insists on fields some distributions leave out.
        response = k8s.VersionApi(conn.api).get_code(_preload_content=False)
        return str(_json(response).get("gitVersion", ""))

    try:
        return call(cluster, run)
    except NotFound:
        raise PermanentKubeError(
            f"Cluster {cluster.name}: the server has no /version; is the address a Kubernetes API server?",
            reason="NotKubernetes",
        ) from None


def served_versions(cluster: ClusterAccess, group: str) -> list[str]:
    """The versions of API `group` the apiserver serves (discovery, /apis/<group>), [] when it
    serves none: how the portal finds out whether a cluster runs an engine, e.g. Kueue's CRDs."""

    def run(conn: Connection) -> list[str]:
        response = conn.api.call_api(
            f"/apis/{group}",
            "GET",
            auth_settings=["BearerToken"],
            response_type="object",
            _preload_content=False,
        )[0]
        body = _json(response)
        return [str(v.get("version", "")) for v in body.get("versions") or [] if v.get("version")]

    try:
        return call(cluster, run)
    except NotFound:
        return []
