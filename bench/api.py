"""API latency and throughput with wrk at concurrency 10 against gunicorn on the bench database.

Rows are bulk-inserted (requests of one team, spread over pending, draft, rejected and cancelled);
the load is one team lead's API token listing `/api/v1/capacity-requests/` (first page of 50, newest
first) and creating-and-submitting requests through POST on the same endpoint. The server runs
portal.settings.test with the per-token courtesy throttle raised out of the way, and with the cluster
pre-flight off because this section has no cluster (its cost is part of the provisioning section).
Query counts per request come from Django's test client under CaptureQueriesContext.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from bench.common import (
    REPO_ROOT,
    Series,
    bench_env,
    django_setup,
    fresh_catalogue,
    log,
    process,
    team_with_lead,
    wait_for,
)

WEB_PORT = 18766
CONNECTIONS = 10
WRK_THREADS = 2
PATH = "/api/v1/capacity-requests/"

LUA_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("BENCH p50_us=%d p95_us=%d requests=%d duration_us=%d non2xx=%d errors=%d\\n",
    latency:percentile(50), latency:percentile(95), summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
"""


def _lua(token: str, body: dict[str, Any] | None) -> str:
    lines = [f'wrk.headers["Authorization"] = "Bearer {token}"']
    if body is not None:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = [[{json.dumps(body)}]]",
        ]
    return "\n".join(lines) + LUA_REPORT


def _prepare(rows: int) -> tuple[str, dict[str, Any]]:
    from django.utils import timezone

    from pools.models import NodePool, PoolClass
    from portal.api.services import api_token_issue
    from quotas.models import CapacityRequest
    from quotas.states import RequestState

    acc, cluster = fresh_catalogue()
    pool = NodePool.objects.create(
        cluster=cluster,
        name="pool-a",
        pool_class=PoolClass.INTERACTIVE,
        accelerator=acc,
        priority_class_name="gpu-interactive-inference",
        node_selector={"accelerator.platform.example.com/pool": "pool-a"},
        capacity_gpus=10_000_000,
        headroom_gpus=0,
    )
    team, lead = team_with_lead("bench", "Bench", "lead")
    now = timezone.now()
    states = [
        RequestState.PENDING_PLATFORM,
        RequestState.DRAFT,
        RequestState.REJECTED,
        RequestState.CANCELLED,
    ]
    CapacityRequest.objects.bulk_create(
        [
            CapacityRequest(
                team=team,
                requester=lead,
                pool_class=PoolClass.INTERACTIVE,
                accelerator=acc,
                pool=pool,
                gpus=1 + i % 8,
                starts_at=now,
                ends_at=now + timedelta(days=1 + i % 30),
                purpose=f"bench request {i}",
                state=states[i % len(states)],
            )
            for i in range(rows)
        ],
        batch_size=2000,
    )
    _analyze()
    token = api_token_issue(user=lead, name="bench").raw
    body = {
        "team": "bench",
        "pool_class": PoolClass.INTERACTIVE,
        "accelerator": "a100-80gb",
        "gpus": 1,
        "ends_at": (now + timedelta(days=2)).isoformat(),
        "purpose": "wrk",
    }
    return token, body


def _analyze() -> None:
    """Vacuum and refresh the planner's statistics, as autovacuum does on a live database some time
    after a bulk load (PostgreSQL vacuums tables that only grew, too): without the statistics it
    plans the 10,000-row list as if the table were nearly empty, and without the visibility map the
    page's count reads every row from the heap instead of the team index alone."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


WARM_UP, TIMED = 10, 31


def _in_process(token: str, body: dict[str, Any]) -> tuple[dict[str, int], dict[str, float]]:
    """Queries per request and the median time of one request with nothing else in flight (Django test
    client, same process): what a request costs before any queueing at concurrency 10."""
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    queries, millis = {}, {}
    with override_settings(PORTAL_PREFLIGHT=False):
        for name, call in (
            ("list", lambda: client.get(PATH)),
            ("create", lambda: client.post(PATH, body, content_type="application/json")),
        ):
            # Warm like a server that has been running: content types, the compiled reads, and the
            # connection's prepared statements and PostgreSQL's plans (psycopg prepares a statement on
            # its second run; PostgreSQL settles on a plan after five).
            for _ in range(WARM_UP):
                call()
            with CaptureQueriesContext(connection) as ctx:
                resp = call()
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"{name}: HTTP {resp.status_code}: {resp.content[:500]!r}")
            queries[name] = len(ctx.captured_queries)
            times = []
            for _ in range(TIMED):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1000)
            millis[name] = statistics.median(times)
    return queries, millis


# Where one list request's time goes, by the functions that own each part (disjoint: none of them
# calls another). The rest is Django's and DRF's request handling: middleware, sessions, the
# authentication and permission classes, routing, the response.
PROFILE_PARTS = {
    "PostgreSQL round trips": ("psycopg/connection.py", "wait"),
    "SQL compilation (ORM)": ("django/db/models/sql/compiler.py", "as_sql"),
    "row values to JSON objects": ("quotas/api/serializers.py", "capacity_request_rows"),
    "JSON rendering": ("portal/api/renderers.py", "render"),
    "timestamps read (Django's PostgreSQL loader)": ("django/db/backends/postgresql/psycopg_any.py", "load"),
}


def _profile_list(token: str, requests: int = 30) -> dict[str, Any]:
    """cProfile over `requests` list requests (in process, after warm-up): the share of each part."""
    import cProfile
    import pstats

    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    for _ in range(3):
        client.get(PATH)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        client.get(PATH)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    parts = {
        name: sum(
            ct for (path, _, fn), (_, _, _, ct, _) in stats.items() if fn == func and path.endswith(file)
        )
        for name, (file, func) in PROFILE_PARTS.items()
    }
    parts["Django and DRF request handling (the rest)"] = max(total - sum(parts.values()), 0.0)
    return {
        "requests": requests,
        "profiled_ms_per_request": total / requests * 1000,
        "share_pct": {name: 100 * seconds / total for name, seconds in parts.items()},
    }


def _wrk(script: str, seconds: int) -> dict[str, float]:
    path = os.path.join(REPO_ROOT, "var", "bench", "wrk.lua")
    with open(path, "w") as f:
        f.write(script)
    result = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", path,
         f"http://127.0.0.1:{WEB_PORT}{PATH}"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    m = re.search(r"BENCH (.*)", result.stdout)
    if m is None:
        raise RuntimeError(f"wrk gave no report: {result.stdout}{result.stderr}")
    raw = dict(kv.split("=") for kv in m.group(1).split())
    requests, duration = int(raw["requests"]), int(raw["duration_us"]) / 1e6
    return {
        "p50_ms": int(raw["p50_us"]) / 1000,
        "p95_ms": int(raw["p95_us"]) / 1000,
        "requests_per_s": requests / duration,
        "requests": requests,
        "non_2xx": int(raw["non2xx"]),
        "socket_errors": int(raw["errors"]),
    }


def _web_up() -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=2)
        conn.request("GET", PATH)
        return conn.getresponse().status in (401, 403)
    except OSError:
        return False


def wrk_version() -> str:
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "n/a"


def run(sizes: tuple[int, ...] = (1000, 10_000), repeats: int = 3, seconds: int = 10) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make bench installs it with apt-get)")
    django_setup()
    os.makedirs(os.path.join(REPO_ROOT, "var", "bench"), exist_ok=True)
    out: dict[str, Any] = {
        "tool": wrk_version(),
        "connections": CONNECTIONS,
        "seconds_per_run": seconds,
        "server": (
            "gunicorn portal.wsgi, 3 sync workers (as the Dockerfile runs it; 2 workers x 5 threads measured "
            "half the throughput here, the threads of a worker contending for its interpreter lock), "
            "portal.settings.test with persistent "
            "database connections (PORTAL_DB_CONN_MAX_AGE=60, as in production)"
        ),
        "sizes": {},
    }
    env = bench_env(
        PORTAL_API_TOKEN_RATE="100000000/min", PORTAL_PREFLIGHT="false", PORTAL_DB_CONN_MAX_AGE="60"
    )
    web_args = [
        sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{WEB_PORT}",
        "--workers", "3", "--log-level", "warning",
    ]  # fmt: skip
    for rows in sizes:
        token, body = _prepare(rows)
        queries, millis = _in_process(token, body)
        result: dict[str, Any] = {
            "rows": rows,
            "queries_per_request": queries,
            "in_process_ms": millis,
            "list_profile": _profile_list(token),
        }
        with process(web_args, os.path.join(REPO_ROOT, "var", "bench", f"api-web-{rows}.log"), env=env):
            wait_for("gunicorn", _web_up, timeout=60)
            _wrk(_lua(token, None), 2)  # warm-up: worker imports, connections, plan caches
            for name, script in (("list", _lua(token, None)), ("create", _lua(token, body))):
                p50, p95, rps = (Series(f"{name} {k}, {rows} rows", u) for k, u in
                                 (("p50", "ms"), ("p95", "ms"), ("throughput", "req/s")))  # fmt: skip
                runs = []
                for _ in range(repeats):
                    r = _wrk(script, seconds)
                    runs.append(r)
                    p50.values.append(r["p50_ms"])
                    p95.values.append(r["p95_ms"])
                    rps.values.append(r["requests_per_s"])
                    log("api", f"{rows} rows {name}: {r}")
                result[name] = {
                    "p50_ms": p50.summary(),
                    "p95_ms": p95.summary(),
                    "rps": rps.summary(),
                    "runs": runs,
                }
        out["sizes"][rows] = result
    return out


if __name__ == "__main__":
    print(json.dumps(run(sizes=(1000,), repeats=1, seconds=3), indent=2, default=str))
