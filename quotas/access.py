"""How a team reaches its grant's namespace: the cluster's API endpoint, the namespace, the group
bound to it, a kubeconfig without any secret and an example manifest from the serving deployments'
own builder. Reads only, from the database: no page view asks the cluster.
"""

import base64
from dataclasses import dataclass
from typing import Any

import yaml

from pools.kube.client import kubeconfig_certificate_authority
from pools.kube.errors import InvalidKubeconfig
from pools.models import Cluster
from quotas import manifests
from quotas.models import Grant
from quotas.reconcile.base import example_serving_spec, grant_contract

KUBECONFIG_NOTE = (
    "# A kubeconfig for namespace {namespace}. It holds no secret: under `users`, add your own\n"
    "# cluster identity (the token, client certificate or exec plugin your platform team gave you).\n"
    "# Members of group {group} may run workloads in the namespace (ClusterRole {role}).\n"
)
MANIFEST_NOTE = (
    "# An example for namespace {namespace}, built like the portal's serving deployments: it states\n"
    "# the whole contract of the grant. Plain manifests work too: the cluster adds what they leave out.\n"
)


@dataclass(frozen=True)
class GrantAccess:
    cluster: str
    api_server: str
    namespace: str
    group: str
    cluster_role: str
    kubeconfig: str
    example_manifest: str
    example: dict[str, Any]


def _certificate_authority(cluster: Cluster) -> str:
    """The cluster's CA bundle as kubeconfig data: the one registered with its URL, else the one in
    its kubeconfig (only that part of it is read; a CA certificate is public)."""
    if cluster.ca_data:
        return base64.b64encode(cluster.ca_data.encode()).decode()
    if cluster.kubeconfig:
        try:
            return kubeconfig_certificate_authority(cluster.kubeconfig)
        except InvalidKubeconfig:
            return ""
    return ""


def _yaml(note: str, document: dict[str, Any]) -> str:
    return note + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def grant_access_get(*, grant: Grant) -> GrantAccess:
    """`grant` must come from a scoped selector (quotas.selectors.grant_list)."""
    contract = grant_contract(grant)
    cluster = grant.pool.cluster
    kubeconfig = manifests.team_kubeconfig(
        cluster=cluster.name,
        server=cluster.api_url,
        certificate_authority=_certificate_authority(cluster),
        namespace=contract.namespace,
        user=f"{cluster.name}-you",
    )
    example = manifests.example_deployment(contract, example_serving_spec(grant))
    values = {"namespace": contract.namespace, "group": contract.group, "role": contract.team_cluster_role}
    return GrantAccess(
        cluster=cluster.name,
        api_server=cluster.api_url,
        namespace=contract.namespace,
        group=contract.group,
        cluster_role=contract.team_cluster_role,
        kubeconfig=_yaml(KUBECONFIG_NOTE.format(**values), kubeconfig),
        example_manifest=_yaml(MANIFEST_NOTE.format(**values), example),
        example=example,
    )
