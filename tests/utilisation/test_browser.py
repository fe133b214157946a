"""In a real browser, against the testbed: the dashboard follows GPU pods being scheduled and
deleted within 5 seconds, without a reload. The collector is the real `collect_utilisation`
process, started on the test database."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import Browser, expect, sync_playwright

from pools.kube import ops
from pools.models import PoolClass
from tests import factories
from tests.common import database_url
from tests.ui.browser import launch, watch_console

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def collector_process():
    started = []

    def start(cluster_name: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the collector is an ordinary process
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "collect_utilisation",
                "--cluster",
                cluster_name,
                "--interval",
                "15",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


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
    collector.send_signal(signal.SIGTERM)
    output, _ = collector.communicate(timeout=30)
    assert collector.returncode == 0, output
    assert f"watching {cluster.name}" in output
