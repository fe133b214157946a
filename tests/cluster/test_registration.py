"""Registering the testbed and reading its inventory, end to end; and every way credentials go wrong,
with the credential never showing up in an error, a log line or a page."""

import json
import logging
import re
import secrets
import socket
import traceback

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.urls import reverse

from pools import services
from pools.kube import ops
from pools.kube.discovery import discover
from pools.kube.objects import POOL_LABEL
from pools.models import Cluster, NodePool, PoolClass
from portal.models import AuditEvent
from tests.cluster.test_discovery import expected_pools, summary
from tests.testbed import load_testbed_module, unique_name

pytestmark = pytest.mark.cluster


def topology_selector(testbed) -> str:
    """The nodes testbed.py made from the topology file (not benchmark extras, not other tests')."""
    tb = load_testbed_module()
    selector = f"{tb.MANAGED_BY_LABEL}={tb.FIELD_MANAGER}"
    extra = (testbed.topology.get("extraNodes") or {}).get("name")
    return f"{selector},{POOL_LABEL}!={extra}" if extra else selector


def test_discovery_returns_exactly_the_topology_files_pools(testbed):
    nodes = ops.list_objects(testbed.admin, "v1", "Node", label_selector=topology_selector(testbed))
    assert summary(discover(nodes, pool_classes=PoolClass.values)) == expected_pools(testbed.topology)


def test_register_then_sync_the_testbed(db, testbed, platform_admin):
    cluster = services.cluster_register(
        name=unique_name("tb"), kubeconfig=testbed.kubeconfig, actor=platform_admin
    )
    assert cluster.pk and cluster.api_url == testbed.server
    assert re.fullmatch(r"v1\.\d+\.\d+.*", cluster.server_version)
    registered = AuditEvent.objects.get(action="cluster.register", object_id=str(cluster.pk))
    assert registered.after["credentials"] == "kubeconfig"
    assert testbed.kubeconfig not in json.dumps(registered.after)

    summary = services.cluster_sync_inventory(cluster=cluster, actor=platform_admin)
    expected = expected_pools(testbed.topology)
    assert set(expected) <= set(summary.created)
    pools = {
        p.name: p
        for p in NodePool.objects.filter(cluster=cluster, name__in=expected).select_related("accelerator")
    }
    assert {
        name: {
            "pool_class": p.pool_class,
            "product": p.accelerator.product,
            "mig_profile": p.accelerator.mig_profile,
            "capacity": p.capacity_gpus,
            "zones": p.zones,
        }
        for name, p in pools.items()
    } == {name: {k: v for k, v in pool.items() if k != "nodes"} for name, pool in expected.items()}
    cpu_pools = [p["name"] for p in testbed.topology["pools"] if "accelerator" not in p]
    assert all(f"Pool {name} not offered: no GPUs." in summary.notes for name in cpu_pools)


# --------------------------------------------------------------------------------------------
# Service-account tokens, for registering with a URL and a token


def test_register_with_a_url_and_token_checks_each_permission(db, testbed, platform_admin, sa_token):
    readonly = sa_token([{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list", "watch"]}])
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(
            name=unique_name("ro"),
            api_url=testbed.server,
            token=readonly,
            ca_data=testbed.ca_data,
            actor=platform_admin,
        )
    error = caught.value.error_dict["__all__"][0]
    assert error.code == "missing_permissions"
    missing = set(error.params["missing"])
    needed = {str(p) for p in services.REQUIRED_PERMISSIONS}
    assert missing == needed - {"list nodes", "watch nodes", "list pods", "watch pods"}
    assert "create validatingadmissionpolicies.admissionregistration.k8s.io" in error.message
    assert not Cluster.objects.exists()

    everything = sa_token([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    cluster = services.cluster_register(
        name=unique_name("sa"),
        api_url=testbed.server,
        token=everything,
        ca_data=testbed.ca_data,
        actor=platform_admin,
    )
    assert cluster.token == everything and cluster.server_version


# --------------------------------------------------------------------------------------------
# Bad credentials


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig_with_token(testbed, token: str) -> str:
    doc = yaml.safe_load(testbed.kubeconfig)
    for user in doc["users"]:
        user["user"] = {"token": token}
    return json.dumps(doc)


CASES = {
    # name: (registration arguments from the testbed and a secret, field to blame, code, words of the message)
    "wrong-token": (
        lambda tb, s: {"api_url": tb.server, "token": s, "ca_data": tb.ca_data},
        "token",
        "unauthorized",
        "refused the credentials (401 Unauthorized)",
    ),
    "wrong-token-in-kubeconfig": (
        lambda tb, s: {"kubeconfig": kubeconfig_with_token(tb, s)},
        "kubeconfig",
        "unauthorized",
        "refused the credentials (401 Unauthorized)",
    ),
    "garbage-kubeconfig": (
        lambda tb, s: {"kubeconfig": f"users:\n- user: {{token: {s}}}\n  ]: ["},
        "kubeconfig",
        "invalid_kubeconfig",
        "The kubeconfig is not valid YAML",
    ),
    "unreachable-port": (
        lambda tb, s: {"api_url": f"https://127.0.0.1:{free_port()}", "token": s, "ca_data": tb.ca_data},
        "api_url",
        "unreachable",
        "is unreachable at 127.0.0.1:",
    ),
    "untrusted-certificate": (
        lambda tb, s: {"api_url": tb.server, "token": s},
        "ca_data",
        "tls",
        "TLS verification of the API server failed",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_credentials_give_a_clear_error_without_the_credential(db, testbed, platform_admin, caplog, case):
    build, field, code, words = CASES[case]
    secret = f"secret-{secrets.token_hex(16)}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(name=unique_name("bad"), actor=platform_admin, **build(testbed, secret))
    errors = caught.value.error_dict
    assert list(errors) == [field] and errors[field][0].code == code
    message = errors[field][0].message
    assert words in message and secret not in message
    assert secret not in "".join(traceback.format_exception(caught.value))
    assert secret not in caplog.text
    assert not Cluster.objects.exists()


def test_a_stored_bad_token_stays_out_of_errors_logs_and_admin_pages(
    db, testbed, platform_admin, caplog, client
):
    secret = f"secret-{secrets.token_hex(16)}"
    cluster = testbed.cluster(kubeconfig="", api_url=testbed.server, token=secret, ca_data=testbed.ca_data)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValidationError) as caught:
        services.cluster_sync_inventory(cluster=cluster, actor=platform_admin)
    assert caught.value.error_dict["token"][0].code == "unauthorized"
    cluster.refresh_from_db()
    assert "401" in cluster.last_error and secret not in cluster.last_error
    client.force_login(platform_admin)
    pages = [
        client.get(reverse("admin:pools_cluster_change", args=[cluster.pk])),
        client.get(reverse("admin:pools_cluster_changelist")),
    ]
    assert [page.status_code for page in pages] == [200, 200]
    assert cluster.last_error in pages[0].content.decode()  # the error is shown, the token is not
    assert not [page for page in pages if secret in page.content.decode()]
    assert secret not in caplog.text


def test_register_refuses_a_plain_http_url(db, platform_admin):
    with pytest.raises(ValidationError) as caught:
        services.cluster_register(
            name="plain", api_url="http://127.0.0.1:6443", token="t0ken", actor=platform_admin
        )
    assert caught.value.message_dict["api_url"] == [
        "Use an https:// address: the token would travel in clear text over http."
    ]
    assert not Cluster.objects.filter(name="plain").exists()
