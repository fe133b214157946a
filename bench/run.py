"""`make bench`: run the benchmark sections and write docs/benchmarks.json and docs/benchmarks.md.

    python -m bench.run [--only approvals,provisioning,collector,api,elastic,queueing]
                        [--quick] [--report-only]

Every section starts and stops its own clusters, workers and servers. A section that fails is
recorded with its error (the others still run) and makes the command exit non-zero. With --only,
the other sections' last results are kept from the existing JSON so the report stays whole.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import report
from bench.common import KUBECTL, REPO_ROOT, log, machine

SECTIONS = ("approvals", "provisioning", "collector", "api", "elastic", "queueing")
JSON_PATH = os.path.join(REPO_ROOT, "docs", "benchmarks.json")
MD_PATH = os.path.join(REPO_ROOT, "docs", "benchmarks.md")


def _plans(quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    from bench import api, approvals, collector, elastic, provisioning, queueing

    if quick:
        return {
            "approvals": lambda: approvals.run(sizes=(200, 1000), repeats=3),
            "provisioning": lambda: provisioning.run(sizes=(10, 50), repeats=3),
            "collector": lambda: collector.run(sizes=(100, 1000), repeats=2, rates=(50, 100, 200, 400)),
            "api": lambda: api.run(sizes=(1000, 10_000), repeats=2, seconds=5),
            "elastic": lambda: elastic.run(delays=(10.0, 30.0), repeats=3),
            "queueing": lambda: queueing.run(repeats=1),
        }
    return {
        "approvals": lambda: approvals.run(sizes=(200, 1000), repeats=5),
        "provisioning": lambda: provisioning.run(sizes=(50, 200), repeats=3),
        # The size is 5,000 nodes (50,000 pods); each first view there lists all of them again.
        "collector": lambda: collector.run(
            sizes=(1000, 5000), repeats=3, largest_repeats=2, rates=(50, 100, 200, 300, 400, 600)
        ),
        "api": lambda: api.run(sizes=(1000, 10_000), repeats=3, seconds=10),
        "elastic": lambda: elastic.run(delays=(15.0, 45.0), repeats=5),
        "queueing": lambda: queueing.run(repeats=2),
    }


def _versions() -> dict[str, str]:
    def out(*args: str) -> str:
        try:
            r = subprocess.run(args, capture_output=True, text=True, check=False, timeout=20)
        except OSError:
            return "n/a"
        lines = (r.stdout or r.stderr).strip().splitlines()
        return lines[0] if lines else "n/a"

    import celery
    import gunicorn
    import kubernetes

    return {
        "kubernetes (testbed, kubectl)": out(KUBECTL, "version", "--client").removeprefix("Client Version: "),
        "etcd / kwok": "v3.6.8 / v0.8.0 (built by scripts/testbed/build.sh)",
        "kueue": "v0.17.0 (built by scripts/testbed/build.sh)",
        "celery": celery.__version__,
        "gunicorn": gunicorn.__version__,
        "kubernetes python client": kubernetes.__version__,
        "wrk": out("wrk", "-v").split(" Copyright")[0].removeprefix("wrk "),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only re-render docs/benchmarks.md from docs/benchmarks.json",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        with open(JSON_PATH) as f:
            _write(json.load(f))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    from bench.common import django_setup

    django_setup()
    previous: dict[str, Any] = {}
    replaced: dict[str, Any] | None = None
    if os.path.exists(JSON_PATH):
        with open(JSON_PATH) as f:
            old = json.load(f)
        if set(only) != set(SECTIONS):
            previous = old.get("sections", {})
        # What this run replaces, so that the report can show whether its figures reproduce.
        replaced = {
            "generated_at": old.get("generated_at"),
            "mode": old.get("mode"),
            "worst_spread_pct": report.worst_spread(old.get("sections", {})),
            "headlines": report.headlines(old.get("sections", {})),
        }
    data: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "versions": _versions(),
        "sections": previous,
        "previous": replaced,
        "measured": only,
    }
    failed = []
    plans = _plans(args.quick)
    for name in SECTIONS:
        if name not in only:
            continue
        log(name, "starting")
        started = time.monotonic()
        load_before = os.getloadavg()
        try:
            result = plans[name]()
        except Exception as exc:  # a failed section is reported, the others still run
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        result["mode"] = data["mode"]
        result["wall_seconds"] = time.monotonic() - started
        result["load_average_before"] = [round(x, 2) for x in load_before]
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        data["sections"][name] = result
        log(name, f"done in {result['wall_seconds']:.0f}s")
        _write(data)
    _write(data)
    print(f"wrote {os.path.relpath(MD_PATH, REPO_ROOT)} and {os.path.relpath(JSON_PATH, REPO_ROOT)}")
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _write(data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(JSON_PATH), exist_ok=True)
    with open(JSON_PATH, "w") as f:
        json.dump(data, f, indent=2, default=str, sort_keys=False)
        f.write("\n")
    # Rendered from the JSON as written, so that a report regenerated from the file looks the same.
    with open(JSON_PATH) as f:
        written = json.load(f)
    with open(MD_PATH, "w") as f:
        f.write(report.markdown(written))


if __name__ == "__main__":
    sys.exit(main())
