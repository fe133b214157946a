"""The Prometheus data source against a real Prometheus server (Debian's `prometheus` package, which
scripts/services.sh installs) scraping a tiny exporter of fixed DCGM and vLLM series every second.

The exporter stamps every sample with its own timestamp and makes each counter a linear function of
that timestamp, so rate() over a window the series fully covers is exactly the slope, and every
expected figure below is worked out by hand.
"""

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.test import Client as DjangoClient
from django.urls import reverse

from pools.utilisation import prometheus

PROMETHEUS = "/usr/bin/prometheus"
WINDOW = "10s"
VISION, NLP = "vision-interactive-r1", "nlp-interactive-r2"  # the namespaces of the `published` fixture
# Per GPU: (node, gpu index, utilisation %, framebuffer used MiB). a100-0 and a100-1 are the
# interactive pool's nodes in `published`; other-node belongs to no pool and must not count.
GPUS = [
    ("a100-0", 0, 80, 30000),
    ("a100-0", 1, 40, 10000),
    ("a100-1", 0, 60, 20000),
    ("other-node", 0, 5, 999),
]
RUNNING = {VISION: 7, NLP: 3}
TOKENS_PER_SECOND = {VISION: 120, NLP: 40}
# Queue-time histograms: vision exports the current name, nlp the older one; (sum/s, count/s).
QUEUE = {VISION: ("vllm:request_queue_time_seconds", 0.5, 4), NLP: ("vllm:time_in_queue_requests", 0.2, 2)}
# Counters start high so that rate() never extrapolates them below zero.
OFFSET = 10_000


def exposition(now_ms: int) -> str:
    t = now_ms / 1000
    lines = []
    for node, gpu, util, memory in GPUS:
        labels = f'gpu="{gpu}",Hostname="{node}",UUID="GPU-{node}-{gpu}"'
        lines.append(f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {util} {now_ms}")
        lines.append(f"DCGM_FI_DEV_FB_USED{{{labels}}} {memory} {now_ms}")
    for namespace in (VISION, NLP):
        ns = f'namespace="{namespace}"'
        lines.append(f"vllm:num_requests_running{{{ns}}} {RUNNING[namespace]} {now_ms}")
        lines.append(
            f"vllm:generation_tokens_total{{{ns}}} {OFFSET + TOKENS_PER_SECOND[namespace] * t!r} {now_ms}"
        )
        name, per_second, count_per_second = QUEUE[namespace]
        lines.append(f"{name}_sum{{{ns}}} {OFFSET + per_second * t!r} {now_ms}")
        lines.append(f"{name}_count{{{ns}}} {OFFSET + count_per_second * t!r} {now_ms}")
    return "\n".join(lines) + "\n"


class ExporterHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = exposition(int(time.time() * 1000)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus_url() -> Iterator[str]:
    """An exporter thread and a Prometheus scraping it every second, until the series cover WINDOW."""
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/services.sh up (it installs Debian's prometheus)")
    exporter = ThreadingHTTPServer(("127.0.0.1", 0), ExporterHandler)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    workdir = Path(tempfile.mkdtemp(prefix="portal-prometheus-"))
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fixture\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter.server_address[1]}']}}]\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = prometheus.Client(url, timeout=2)
        # Every counter must have samples older than WINDOW, so rate() over it is the exact slope.
        covered = f"min(count_over_time(vllm:generation_tokens_total[{int(WINDOW[:-1]) + 3}s]))"
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_text(workdir)}")
            try:
                samples = client.query(covered)
                if samples and (samples[0].value or 0) >= int(WINDOW[:-1]) + 2:
                    break
            except prometheus.PrometheusError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus did not collect the fixture series in time:\n{log_text(workdir)}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        exporter.shutdown()
        exporter.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def log_text(workdir: Path) -> str:
    return (workdir / "prometheus.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def short_window(monkeypatch):
    monkeypatch.setattr(prometheus, "RATE_WINDOW", WINDOW)


def latest_sample_time(url: str) -> datetime:
    """The time of the newest sample, so the window ends exactly on one."""
    samples = prometheus.Client(url).query("min(timestamp(vllm:generation_tokens_total))")
    return datetime.fromtimestamp(samples[0].value, UTC)


def test_client_returns_pool_gpu_figures_and_serving_costs(prometheus_url, short_window):
    price = Decimal("2.5")
    result = prometheus.pool_prometheus(
        url=prometheus_url,
        node_label="Hostname",
        nodes=["a100-0", "a100-1"],
        gpus_by_namespace={VISION: 6, NLP: 4},
        hourly_cost=price,
        at=latest_sample_time(prometheus_url),
    )
    assert result.unavailable == ""
    # The three GPUs of a100-0 and a100-1, not other-node's.
    assert result.gpu.gpus_reporting == 3
    assert result.gpu.nodes_reporting == 2
    assert result.gpu.utilisation_percent == pytest.approx((80 + 40 + 60) / 3)
    assert result.gpu.memory_used_mib == 30000 + 10000 + 20000
    vision, nlp = sorted(result.serving, key=lambda s: s.namespace != VISION)
    assert (vision.namespace, vision.gpus, vision.running) == (VISION, 6, 7)
    assert (nlp.namespace, nlp.gpus, nlp.running) == (NLP, 4, 3)
    assert vision.tokens_per_second == pytest.approx(120, rel=1e-6)
    assert nlp.tokens_per_second == pytest.approx(40, rel=1e-6)
    assert vision.queue_seconds == pytest.approx(0.5 / 4, rel=1e-6)
    assert nlp.queue_seconds == pytest.approx(0.2 / 2, rel=1e-6)
    # 6 GPUs at 2.5 an hour cost 15/3600 a second, which buys 120 tokens.
    assert float(vision.cost_per_token) == pytest.approx(6 * 2.5 / 3600 / 120, rel=1e-6)
    assert float(nlp.cost_per_token) == pytest.approx(4 * 2.5 / 3600 / 40, rel=1e-6)
    assert float(vision.cost_per_million_tokens) == pytest.approx(1_000_000 * 15 / 3600 / 120, rel=1e-6)


def test_a_node_label_that_matches_nothing_gives_no_utilisation(prometheus_url):
    result = prometheus.pool_prometheus(
        url=prometheus_url,
        node_label="kubernetes_node",
        nodes=["a100-0"],
        gpus_by_namespace={},
        hourly_cost=Decimal("1"),
    )
    assert result.unavailable == ""
    assert (result.gpu.gpus_reporting, result.gpu.utilisation_percent, result.serving) == (0, None, [])


def test_a_promql_error_is_a_clear_bad_response(prometheus_url):
    with pytest.raises(prometheus.PrometheusBadResponse, match="bad_data"):
        prometheus.Client(prometheus_url).query("rate(")


def test_prometheus_down_is_unavailable_with_the_reason():
    url = f"http://127.0.0.1:{free_port()}"
    result = prometheus.pool_prometheus(
        url=url,
        node_label="Hostname",
        nodes=["a100-0"],
        gpus_by_namespace={VISION: 1},
        hourly_cost=Decimal("1"),
    )
    assert result.gpu is None
    assert result.unavailable.startswith(f"cannot reach {url}")
    assert "refused" in result.unavailable.lower()


def test_something_that_is_not_prometheus_is_a_bad_response():
    class NotPrometheus(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>login</html>")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(prometheus.PrometheusBadResponse, match="did not answer with JSON"):
            prometheus.Client(f"http://127.0.0.1:{server.server_address[1]}").query("up")
    finally:
        server.shutdown()
        server.server_close()


def signed_in(user) -> DjangoClient:
    client = DjangoClient()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_pool_and_cost_pages_show_prometheus_figures(world, published, prometheus_url, short_window):
    cluster = world.interactive.cluster
    cluster.prometheus_url = prometheus_url
    cluster.save()
    alice = signed_in(world.alice)  # vision only
    html = alice.get(reverse("utilisation:pool", args=[world.interactive.pk])).content.decode()
    assert 'data-prometheus="ok"' in html
    assert 'data-gpu-util="60.0"' in html
    assert "60.0% over 3 GPUs on 2 nodes" in html
    assert 'data-gpu-memory-mib="60000"' in html
    assert "58.6 GiB" in html  # 60000 MiB
    row = re.search(
        rf'<tr data-namespace="{VISION}" data-tokens-per-second="([^"]+)" data-cost-per-token="([^"]+)"', html
    )
    # Evaluated at page time rather than on a sample, so the rate is only close to the slope.
    assert float(row.group(1)) == pytest.approx(120, rel=0.2)
    assert float(row.group(2)) == pytest.approx(6 * 2.5 / 3600 / float(row.group(1)), rel=1e-6)
    assert NLP not in html.split('id="pool-prometheus"')[1]  # another team's serving figures
    # The region is its own polled partial.
    partial = alice.get(
        reverse("utilisation:pool", args=[world.interactive.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="pool-prometheus",
    ).content.decode()
    assert partial.lstrip().startswith('<section id="pool-prometheus"')
    cost = alice.get(reverse("utilisation:cost")).content.decode()
    assert "Cost per generated token" in cost
    assert f'<tr data-namespace="{VISION}"' in cost and NLP not in cost.split("token-cost-title")[1]
    admin = signed_in(world.admin).get(reverse("utilisation:cost")).content.decode()
    assert f'<tr data-namespace="{NLP}"' in admin


@pytest.mark.django_db
def test_pages_say_prometheus_is_unavailable_when_it_is_down(world, published):
    cluster = world.interactive.cluster
    cluster.prometheus_url = f"http://127.0.0.1:{free_port()}"
    cluster.save()
    alice = signed_in(world.alice)
    response = alice.get(reverse("utilisation:pool", args=[world.interactive.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-prometheus="unavailable"' in html
    assert f"Prometheus unavailable: cannot reach {cluster.prometheus_url}" in html
    cost = alice.get(reverse("utilisation:cost"))
    assert cost.status_code == 200
    assert f'data-prometheus-unavailable="{cluster.name}"' in cost.content.decode()


@pytest.mark.django_db
def test_without_a_prometheus_url_nothing_is_asked_or_shown(world, published):
    html = (
        signed_in(world.alice).get(reverse("utilisation:pool", args=[world.interactive.pk])).content.decode()
    )
    assert "pool-prometheus" not in html
