"""In a real browser, against the testbed: the dashboard follows GPU pods being scheduled and
deleted within 5 seconds, without a reload. The collector is the real `collect_utilisation`
process, started on the test database."""

from collections.abc import Iterator

import pytest
from django.test import Client
from playwright.sync_api import Browser, expect, sync_playwright

from pools.kube import ops
from pools.models import PoolClass
from tests import factories
from tests.ui.browser import launch, watch_console

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API runs an event loop in this thread; the Django calls the test makes
    # around it are synchronous all the same. Only for this module: later tests (check --deploy)
    # must not inherit the switch.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = launch(playwright)
        console = watch_console(chromium)
        yield chromium
        chromium.close()
        console.check()  # no CSP violation in any page of the module


def test_dashboard_follows_gpu_pods_without_reload(
    world, testbed, private_pool, k8s_namespace, live_server, browser, collector_process
):
    cluster = testbed.cluster()
    private_pool.add_nodes(1, gpus=8)
    factories.pool(private_pool.name, PoolClass.EXPERIMENTATION, world.a100, capacity=8, cluster=cluster)
    collector = collector_process(cluster.name)

    client = Client()
    client.force_login(world.alice)
    context = browser.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    page = context.new_page()
    page.goto(f"{live_server.url}/utilisation/")
    card = page.locator(f'article[data-pool="{private_pool.name}"]')
    # The collector process needs a moment to start and list the cluster.
    expect(card).to_have_attribute("data-free", "8", timeout=30_000)
    page.evaluate("window.notReloaded = true")

    pod = {**private_pool.pod("serve", 3), "metadata": {"name": "serve", "namespace": k8s_namespace}}
    ops.create(cluster, pod)
    expect(card).to_have_attribute("data-free", "5", timeout=5_000)
    expect(card.locator(".requested-count")).to_have_text("3 (38%)")

    ops.delete(cluster, "v1", "Pod", "serve", k8s_namespace)
    expect(card).to_have_attribute("data-free", "8", timeout=5_000)
    expect(card.locator(".requested-count")).to_have_text("0 (0%)")
    assert page.evaluate("window.notReloaded") is True

    context.close()
    returncode, output = collector.stop()
    assert returncode == 0, output
    assert f"watching {cluster.name}" in output
