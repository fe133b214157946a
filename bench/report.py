"""Render docs/benchmarks.md from the JSON that bench.run writes. Everything shown is measured; the
explanations of misses name what the measurement attributes the cost to."""

import statistics
from typing import Any

Json = dict[str, Any]

FRAGMENT_P95_MS = 50  # the target for a dashboard fragment while pods churn


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if value == float("inf"):
        return "never (60 s timeout)"
    return f"{value:,.{digits}f}"


def _s(summary: Json | None, digits: int = 2) -> str:
    """median (min-max, n runs)."""
    if not summary or summary.get("median") is None:
        return "n/a"
    if summary["runs"] == 1:
        return f"{_num(summary['median'], digits)} (1 run)"
    return (
        f"{_num(summary['median'], digits)} ({_num(summary['min'], digits)}-{_num(summary['max'], digits)}, "
        f"n={summary['runs']})"
    )


def _largest(section: Json) -> tuple[str, Json] | None:
    sizes = section.get("sizes") or {}
    if not sizes:
        return None
    key = max(sizes, key=int)
    return key, sizes[key]


def _target(name: str, measured: str, ok: bool | None, reason: str = "") -> list[str]:
    verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
    # An error message may span lines (PostgreSQL's DETAIL and HINT); a table cell may not.
    measured = " ".join(measured.split())
    return [f"| {name} | {measured} | **{verdict}** | {'' if ok else reason} |"]


def _targets(sections: Json) -> list[str]:
    rows = ["| Target | Measured (median) | Result | Why missed |", "|---|---|---|---|"]
    prov = sections.get("provisioning") or {}
    if (big := _largest(prov)) is not None:
        n, r = big
        one, dirr = r["ratio"]["one_at_a_time"]["median"], r["ratio"]["directory"]["median"]
        sec = r["seconds"]
        approve = statistics.median(run["approve_seconds"] for run in r["runs"])
        why = (
            f"{_num(sec['portal']['median'], 1)} s end to end, of which the {n} approvals, one after "
            f"another with a cluster pre-flight each and sharing the 2 cores with the worker, take "
            f"{_num(approve, 1)} s; the worker applies each grant's 4 objects in passes shared by the "
            f"grants approved meanwhile, waits for the quota controller to report each quota, proves "
            f"enforcement with a dry-run probe pair per pass and records every grant in PostgreSQL; kubectl "
            f"-f DIR ({_num(sec['kubectl_directory']['median'], 1)} s) is one process that only applies"
        )
        rows += _target(
            f"Provisioning {n} grants: portal / kubectl one object at a time <= 1.0",
            f"{_num(one)}x",
            one <= 1.0,
            why,
        )
        rows += _target(
            f"Provisioning {n} grants: portal / kubectl -f DIR <= 2.0", f"{_num(dirr)}x", dirr <= 2.0, why
        )
        if "bulk_directory" in r["ratio"]:
            bulk = r["ratio"]["bulk_directory"]["median"]
            bulk_approve = statistics.median(run["bulk_approve_seconds"] for run in r["runs"])
            rows += _target(
                f"Provisioning {n} grants approved in bulk: portal / kubectl -f DIR <= 1.0",
                f"{_num(bulk)}x ({_num(sec['portal_bulk']['median'], 1)} s, "
                f"approvals {_num(bulk_approve, 2)} s)",
                bulk <= 1.0,
                "beyond applying, the portal proves enforcement: it waits for the quota controller to report "
                "every grant's quota and for a dry-run pod to be refused and another completed by the "
                "policies, and records each grant in PostgreSQL",
            )
    else:
        rows += _target("Provisioning", prov.get("error", "not run"), None)
    col = sections.get("collector") or {}
    if (big := _largest(col)) is not None:
        rows += _collector_targets(col)
        # The target is at 1,000 nodes; the largest size is shown beside it.
        for n, r in sorted((col.get("sizes") or {}).items(), key=lambda kv: int(kv[0])):
            if int(n) < 1000 or "fragments" not in r:
                continue
            scale = f"{n} nodes / {r['pods']:,} pods"
            p95 = {k: v["p95_ms"] for k, v in r["fragments"].items() if not k.endswith("_304")}
            p95_304 = {k: v["p95_ms"] for k, v in r["fragments"].items() if k.endswith("_304")}
            worst = max(p95.values())
            rows += _target(
                f"Dashboard fragment p95 < {FRAGMENT_P95_MS} ms while pods churn ({scale})",
                ", ".join(f"{k} {_num(v, 0)} ms" for k, v in p95.items())
                + " (not modified: "
                + ", ".join(f"{k.removesuffix('_304')} {_num(v, 0)} ms" for k, v in p95_304.items())
                + ")",
                worst < FRAGMENT_P95_MS,
                _fragment_reason(r),
            )
    else:
        rows += _target("Collector", col.get("error", "not run"), None)
    api = sections.get("api") or {}
    if (big := _largest(api)) is not None:
        n, r = big
        lst, crt = r["list"]["p95_ms"]["median"], r["create"]["p95_ms"]["median"]
        list_rps = r["list"]["rps"]["median"] or float("nan")
        alone = r.get("in_process_ms", {}).get("list")
        rows += _target(
            f"API list p95 < 60 ms ({int(n):,} rows, concurrency 10)",
            f"{_num(lst, 0)} ms",
            lst < 60,
            f"one request costs {_num(alone, 1)} ms alone ({_profile_text(r)}); the server peaks at "
            f"{_num(list_rps, 0)} requests/s on 2 cores shared with PostgreSQL and wrk, so 10 in flight "
            f"wait about {_num(10 / list_rps * 1000, 0)} ms each (10 / throughput)",
        )
        rows += _target(
            f"API list: one request alone < 6 ms in process ({int(n):,} rows)",
            f"{_num(alone, 1)} ms",
            alone is not None and alone < 6,
            _profile_text(r),
        )
        rows += _target(
            f"API create p95 < 100 ms ({int(n):,} rows, concurrency 10)",
            f"{_num(crt, 0)} ms",
            crt < 100,
            f"{r['queries_per_request']['create']} queries per create, "
            f"{_num(r.get('in_process_ms', {}).get('create'), 0)} ms alone (membership, the pool's "
            "figures, the insert, the submit's state move, two audit rows, the read-back); the bench's "
            "interactive requests are not auto-approved, so no row lock is held: the two cores, shared by "
            "the web workers and PostgreSQL, are the limit, and 10 in flight at "
            f"{_num(r['create']['rps']['median'], 0)} requests/s wait about "
            f"{_num(10 / (r['create']['rps']['median'] or float('nan')) * 1000, 0)} ms each",
        )
    else:
        rows += _target("API", api.get("error", "not run"), None)
    appr = sections.get("approvals") or {}
    for n, r in (appr.get("sizes") or {}).items():
        rate = r["rate"]["median"]
        rows += _target(
            f"Approvals >= 50/s, no capacity violation ({n} requests)",
            f"{_num(rate, 0)}/s, {r['capacity_violations']} violations",
            rate >= 50 and r["capacity_violations"] == 0,
            "approvals of one pool serialise on its row lock by design",
        )
        if "bulk_rate" in r:
            bulk = r["bulk_rate"]["median"]
            rows += _target(
                f"Bulk decisions >= 200/s, no capacity violation ({n} requests)",
                f"{_num(bulk, 0)}/s, {r['capacity_violations']} violations",
                bulk >= 200 and r["capacity_violations"] == 0,
                "each approval still writes its decision, state move and grant row by row (their audit "
                "rows go in one insert per pool)",
            )
    if "error" in appr:
        rows += _target("Approvals", appr["error"], None)
    ela = sections.get("elastic") or {}
    for delay, r in (ela.get("delays") or {}).items():
        ratio = r["ratio"]["median"]
        rows += _target(
            f"Interactive pod to Running, warm headroom / from zero <= 0.1 (bring-up {delay} s)",
            f"{_num(ratio, 3)}x ({_num(r['warm']['median'])} s / {_num(r['cold']['median'])} s)",
            ratio <= 0.1,
            "the warm pod waits for the scheduler to preempt a placeholder and for kwok to start it",
        )
        active = r["approval_to_active"]["median"]
        rows += _target(
            f"Approval to Active on a pool with zero nodes does not wait for a node (bring-up {delay} s)",
            f"{_num(active)} s",
            active < float(delay),
            "the grant's provisioning took longer than a node's bring-up",
        )
    if (lat := ela.get("approval_latency")) is not None:
        rows += _target(
            "Final approval p95 < 100 ms with the pre-flight on (live cluster)",
            f"{_num(lat['live_ms']['p95'], 1)} ms",
            lat["live_ms"]["p95"] < 100,
            "the approval's own database work on a loaded machine",
        )
        rows += _target(
            "Final approval < 1 s when the cluster does not answer",
            f"{_num(lat['stale_ms']['max'], 1)} ms (max), refused: {', '.join(lat['stale_reason'])}",
            lat["stale_ms"]["max"] < 1000,
            "",
        )
    if "error" in ela:
        rows += _target("Elastic pools", ela["error"], None)
    queueing = sections.get("queueing") or {}
    for queues, r in (queueing.get("sizes") or {}).items():
        rate = r["admissions_per_second"]["median"]
        lag = statistics.median(run["portal_shows_seconds"] - run["admit_seconds"] for run in r["runs"])
        rows += _target(
            f"Portal figures follow Kueue within 10 s (1,000 admissions, {queues} queue(s))",
            f"{_num(lag, 1)} s after Kueue",
            lag <= 10,
            "the collector recomputes every queue from its watch caches at most every 0.5 s; 1,000 "
            "Workload events and pods arriving at once compete for the 2 cores with Kueue and the apiserver",
        )
        rows += _target(
            f"Admissions/s through portal queues vs Kueue's baseline ~{_num(KUEUE_BASELINE_PER_SECOND, 0)}/s "
            f"({queues} queue(s))",
            f"{_num(rate, 1)}/s",
            rate >= KUEUE_BASELINE_PER_SECOND,
            "not the same setup (section 6): Kueue admits one Workload per ClusterQueue per scheduling "
            "cycle, its baseline spreads 15,000 over 30 queues, and here each admission is a real Job "
            "with a pod, on 2 shared cores, within Kueue's 50 requests/s client limit",
        )
    if "error" in queueing:
        rows += _target("Queueing", queueing["error"], None)
    return rows


def _peak_rss(r: Json) -> float:
    return max(r["peak_rss_mib"]["max"], r["rss_after_churn_mib"].get("VmHWM", 0))


def _first_view_reason(r: Json) -> str:
    pod_list = (r.get("pod_list_seconds") or {}).get("median")
    listed = (
        f"of which the collector's list of the {r['pods']:,} pods took {_num(pod_list, 1)} s (the apiserver "
        "encoding them and the collector decoding and trimming them, on the same 2 cores); "
        if pod_list is not None
        else ""
    )
    rest = "the rest is" if listed else "before its first write the collector runs"
    return (
        f"{listed}{rest} Python and Django start-up, the node list and the first computation and "
        "write of the figures; the other work on the machine shares the cores (see the load averages)"
    )


def _fragment_reason(r: Json) -> str:
    why = (
        "a full render reads the session with its user, then the version and every figure in one round trip "
        "(2 round trips; 4 before 2026-12-04, counting the health check of the reused connection, and 9 for "
        "the overview before that), and takes 5-9 ms in process on a quiet machine (the "
        "machine's own speed varies that much from hour to hour; the test client's cost included), a "
        "not-modified answer about 2 ms; under the churn even the not-modified answer has a p95 of 30-40 "
        "ms: the web server and PostgreSQL share 2 cores with the apiserver, etcd, kwok, the collector and "
        "the churn generator, which run flat out during the steps, so a request waits several times its "
        "own CPU time"
    )
    niced = r.get("niced") or {}
    if niced.get("fragments"):
        full = {
            k: v["p95_ms"] for k, v in niced["fragments"].items() if not k.endswith("_304") and v["requests"]
        }
        p95 = ", ".join(f"{k} {_num(v, 0)} ms" for k, v in full.items())
        if not niced.get("autogroups"):
            why += (
                f"; the diagnostic below set the testbed's threads to nice {niced['nice']} but not their "
                f"autogroups, which the scheduler shares the cores between first, so its p95 ({p95}) says "
                "nothing about priority"
            )
        elif max(full.values(), default=0) < FRAGMENT_P95_MS:
            why += (
                f"; with the testbed's processes at nice {niced['nice']} (the diagnostic below) the p95 is "
                f"{p95}, within the target: the polls wait for the cores the testbed's control plane and "
                "kubelets take, which production runs on machines of their own"
            )
        else:
            why += (
                f"; even with the testbed's processes at nice {niced['nice']} (the diagnostic below) the p95 "
                f"is {p95}: the polls also wait for the collector, PostgreSQL and the load generator"
            )
    return why


def _niced(c: Json) -> list[str]:
    """The diagnostic churn: the same polls with the testbed's processes at a lower CPU priority."""
    rows = [(n, r["niced"]) for n, r in (c.get("sizes") or {}).items() if "fragments" in r.get("niced", {})]
    if not rows:
        return []
    groups = " and their autogroups" if rows[0][1].get("autogroups") else ""
    out = [
        "",
        f"Diagnostic, not a target: the same polls during {len(rows[0][1]['churn'])} more churn steps "
        "with every thread of the testbed's processes (etcd, the apiserver, controller-manager, scheduler, "
        f"kwok){groups} at nice {rows[0][1]['nice']}, as if the cluster ran on machines of its own, as in "
        "production (the load generator, the collector, PostgreSQL and the web server keep their priority):",
        "",
    ]
    for n, niced in rows:
        frag = ", ".join(
            f"{name} {_num(f['p50_ms'], 0)} / {_num(f['p95_ms'], 0)} ms"
            for name, f in niced["fragments"].items()
            if f and f["requests"]
        )
        events = ", ".join(f"{_num(s['watch_events_per_s'], 0)} ev/s" for s in niced["churn"])
        out.append(f"- {n} nodes ({events}): p50 / p95 {frag}; fragment errors: {niced['fragment_errors']}")
    return out


def _settled(r: Json) -> str:
    """How long the first views waited for the testbed to settle (n/a: measured before the bench waited)."""
    if "settle_seconds" not in r:
        return "n/a"
    unsettled = r.get("unsettled_views", 0)
    return _s(r["settle_seconds"], 0) + (f", {unsettled} unsettled" if unsettled else "")


def _top_step(r: Json) -> Json | None:
    """The churn step with the highest watch event rate: what the testbed delivered at most."""
    return max(r.get("churn") or [], key=lambda s: s["watch_events_per_s"], default=None)


def _collector_targets(col: Json) -> list[str]:
    """The earlier issue's targets at 1,000 nodes, and issue 18's at 5,000 (50,000 pods)."""
    rows: list[str] = []
    sizes = col.get("sizes") or {}
    if (r := sizes.get("1000")) is not None:
        scale = f"1000 nodes / {r['pods']:,} pods"
        first = r["first_view"]["median"]
        rows += _target(
            f"Collector first complete view < 10 s ({scale})",
            f"{_num(first, 1)} s",
            first < 10,
            _first_view_reason(r),
        )
        sustained = r["sustained_events_per_s"]
        rows += _target(
            f"Collector keeps up with >= 200 pod events/s ({scale})",
            f"{_num(sustained, 0)} pod watch events/s ({_num(r['sustained_ops_per_s'], 0)} pod writes/s)",
            sustained >= 200,
            _churn_reason(r),
        )
        peak = _peak_rss(r)
        rows += _target(
            f"Collector resident memory < 300 MiB ({scale})", f"{_num(peak, 0)} MiB peak", peak < 300, ""
        )
    if (r := sizes.get("5000")) is not None:
        scale = f"5000 nodes / {r['pods']:,} pods"
        first = r["first_view"]["median"]
        rows += _target(
            f"Collector first complete view < 20 s ({scale})",
            f"{_num(first, 1)} s",
            first < 20,
            _first_view_reason(r),
        )
        peak = _peak_rss(r)
        rows += _target(
            f"Collector resident memory < 400 MiB ({scale})",
            f"{_num(peak, 0)} MiB peak",
            peak < 400,
            f"{_num(r['peak_rss_mib']['max'], 0)} MiB at the first views; the churn's collector reached "
            f"{_num(r['rss_after_churn_mib'].get('VmHWM'), 0)} MiB. The pod cache keeps a trimmed copy of "
            "every pod as Python objects, and a list again (after a 410) builds the new copy beside the old"
            + _per_pod(col),
        )
        top = _top_step(r)
        if top is not None:
            lag = top["lag_seconds"]
            rows += _target(
                f"Collector lag < 2 s at the highest event rate the testbed delivers ({scale})",
                f"{_num(lag, 2)} s at {_num(top['watch_events_per_s'], 0)} pod watch events/s "
                f"({_num(top['achieved_ops_per_s'], 0)} pod writes/s)",
                lag < 2,
                "each recompute walks all 50,000 pods and 5,000 nodes and writes the pool's 5,000-node "
                "detail; the churn generator, kwok, the apiserver, etcd and the dashboard's web server "
                "share the same 2 cores",
            )
    return rows


def _per_pod(c: Json) -> str:
    sizes = c.get("sizes") or {}
    if len(sizes) < 2:
        return ""
    a, b = sizes[min(sizes, key=int)], sizes[max(sizes, key=int)]
    kib = (_peak_rss(b) - _peak_rss(a)) * 1024 / max(b["pods"] - a["pods"], 1)
    return f" (about {_num(kib, 1)} KiB of peak RSS per pod added between the two sizes)"


def _growth(c: Json) -> list[str]:
    """How each figure grows from the smallest size to the largest."""
    sizes = c.get("sizes") or {}
    if len(sizes) < 2:
        return []
    lo, hi = min(sizes, key=int), max(sizes, key=int)
    a, b = sizes[lo], sizes[hi]
    factor = int(hi) / int(lo)

    def ratio(x: float | None, y: float | None) -> str:
        return f"x{_num(y / x, 1)}" if x and y is not None else "n/a"

    first_a, first_b = a["first_view"]["median"], b["first_view"]["median"]
    list_a = (a.get("pod_list_seconds") or {}).get("median")
    list_b = (b.get("pod_list_seconds") or {}).get("median")
    peak_a, peak_b = _peak_rss(a), _peak_rss(b)
    per_pod = (peak_b - peak_a) * 1024 / max(b["pods"] - a["pods"], 1)
    top_a, top_b = _top_step(a), _top_step(b)
    p95 = {
        k: ratio(a["fragments"][k]["p95_ms"], b["fragments"][k]["p95_ms"])
        for k in ("overview", "pool")
        if k in a["fragments"] and k in b["fragments"]
    }
    parts = [
        f"first view {_num(first_a, 1)} → {_num(first_b, 1)} s ({ratio(first_a, first_b)}"
        + (f"; the pod list {_num(list_a, 1)} → {_num(list_b, 1)} s" if list_a and list_b else "")
        + ")",
        f"peak RSS {_num(peak_a, 0)} → {_num(peak_b, 0)} MiB ({ratio(peak_a, peak_b)}, about "
        f"{_num(per_pod, 1)} KiB per added pod)",
    ]
    if top_a and top_b:
        parts.append(
            f"lag at the highest event rate {_num(top_a['lag_seconds'], 2)} s at "
            f"{_num(top_a['watch_events_per_s'], 0)} events/s → {_num(top_b['lag_seconds'], 2)} s at "
            f"{_num(top_b['watch_events_per_s'], 0)} events/s; sustained events/s "
            f"{_num(a['sustained_events_per_s'], 0)} → {_num(b['sustained_events_per_s'], 0)}"
        )
    parts += [f"{k} fragment p95 {v}" for k, v in p95.items()]
    return [
        "",
        f"How it grows from {lo} to {hi} nodes ({_num(factor, 0)}x the nodes and pods): "
        + "; ".join(parts)
        + ".",
    ]


def _churn_reason(r: Json) -> str:
    steps = r.get("churn") or []
    failed = next((s for s in steps if not s["kept_up"]), None)
    if failed is not None:
        return (
            f"at {_num(failed['watch_events_per_s'], 0)} events/s the figures lagged "
            f"{_num(failed['lag_seconds'], 1)} s after the step"
        )
    top = max(steps, key=lambda s: s["watch_events_per_s"], default=None)
    if top is None:
        return ""
    return (
        f"the collector kept up with every step; the load generator, sharing the 2 cores with the "
        f"apiserver, offered at most {_num(top['achieved_ops_per_s'], 0)} writes/s "
        f"({_num(top['watch_events_per_s'], 0)} events/s)"
    )


def _grows(label: str, sizes: list[tuple[str, float | None]], unit: str, digits: int = 1) -> str:
    """ "label a → b unit (xN)" over the smallest and largest size, for the "how it grows" lines."""
    (_, small), (_, big) = sizes[0], sizes[-1]
    factor = f" (x{_num(big / small, 1)})" if small and big is not None else ""
    return f"{label} {_num(small, digits)} → {_num(big, digits)} {unit}{factor}"


def _provisioning(p: Json) -> list[str]:
    out = [
        "## 1. Provisioning",
        "",
        f"Cluster: {p.get('cluster', '')}; pool `{p.get('pool', '')}`; {p.get('worker', '')}.",
        "",
        "- **Portal one by one**: N requests approved by a platform admin, one `capacity_request_approve` "
        "after another (cluster pre-flight on, reading the collector's inventory), each queuing its grant's "
        "first apply (`grants_provision`); a pass takes its grant with the other approved grants of the "
        "cluster waiting then, up to 25, so approvals that queue faster than the worker applies share "
        "passes. The clock stops when every request is `active` (its grant's Ready condition is True).",
        "- **Baseline kubectl one at a time**: the same manifests (built by `quotas.manifests` / "
        "`pools.manifests` from the same grants, in fresh namespaces; the three cluster-wide objects once), "
        "one `kubectl apply --server-side` process per object, sequentially.",
        "- **Baseline kubectl -f DIR**: the same manifests, another set of fresh namespaces, in one "
        "`kubectl apply --server-side -f DIR`.",
        "- What the portal does beyond the baselines: the approvals (capacity checks under a row lock, the "
        "cluster pre-flight, audit rows) are part of its time; per grant the worker applies the grant's 4 "
        "objects (the 3 cluster-wide ones once per pass), waits until the quota controller reports the new "
        "ResourceQuota, proves the policy and the injection are in force with dry-run pods (one pair per "
        "pass, in the namespace written last), and records conditions, state moves and audit rows in "
        "PostgreSQL. kubectl only applies and waits for nothing.",
        "- Objects/s counts the distinct objects (4 per grant + 3 cluster-wide) over each method's median "
        "time.",
        "",
        "| Grants | Objects | Portal s | kubectl 1-by-1 s | kubectl -f DIR s "
        "| Objects/s portal / 1-by-1 / DIR | Portal / 1-by-1 | Portal / DIR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in p.get("sizes", {}).items():
        sec, ops, ratio = r["seconds"], r["objects_per_second"], r["ratio"]
        out.append(
            f"| {n} | {r['objects']} | {_s(sec['portal'])} | {_s(sec['kubectl_one_at_a_time'])} | "
            f"{_s(sec['kubectl_directory'])} | {_num(ops['portal'], 0)} / "
            f"{_num(ops['kubectl_one_at_a_time'], 0)} / {_num(ops['kubectl_directory'], 0)} | "
            f"{_s(ratio['one_at_a_time'])} | {_s(ratio['directory'])} |"
        )
    approve = [run["approve_seconds"] for r in p.get("sizes", {}).values() for run in r["runs"]]
    if approve:
        out += [
            "",
            f"The approvals themselves (pre-flight included) took {_num(min(approve))}-"
            f"{_num(max(approve))} s of the portal's time.",
        ]
    bulk_sizes = {n: r for n, r in p.get("sizes", {}).items() if "portal_bulk" in r["seconds"]}
    if bulk_sizes:
        out += [
            "",
            "**Bulk**: another N requests approved with one bulk decision per 500 "
            "(`capacity_requests_decide`: one pre-flight and one locked transaction per pool), their grants "
            "queued together and reconciled in one pass (`quotas.reconcile.bulk`: cluster-wide objects "
            "once, the grants' objects applied 8 requests at a time, the quotas read in shared rounds, "
            "enforcement and injection proven by one dry-run probe each in the newest namespace).",
            "",
            "| Grants | Portal bulk s | of which approvals s | kubectl -f DIR s | Portal bulk / DIR |",
            "|---|---|---|---|---|",
        ]
        for n, r in bulk_sizes.items():
            bulk_approve = statistics.median(run["bulk_approve_seconds"] for run in r["runs"])
            out.append(
                f"| {n} | {_s(r['seconds']['portal_bulk'])} | {_num(bulk_approve, 2)} | "
                f"{_s(r['seconds']['kubectl_directory'])} | {_s(r['ratio']['bulk_directory'])} |"
            )
        phased = {n: r for n, r in bulk_sizes.items() if all("bulk_phases" in run for run in r["runs"])}
        if phased:
            out += [
                "",
                "What proving enforcement costs: the bulk passes' own account (the worker logs each pass; "
                "seconds summed over the passes of a run, which run side by side in the worker's processes, "
                "medians over runs):",
                "",
                "| Grants | Passes | Applying s | Proving enforcement s | Recording s | Enforcement share |",
                "|---|---|---|---|---|---|",
            ]
            for n, r in phased.items():
                ph = [run["bulk_phases"] for run in r["runs"]]

                def med(key: str, ph: list[Json] = ph) -> float:
                    return statistics.median(p[key] for p in ph)

                total = med("apply_seconds") + med("enforcement_seconds") + med("record_seconds")
                share = med("enforcement_seconds") / total * 100 if total else float("nan")
                out.append(
                    f"| {n} | {_num(med('passes'), 0)} | {_num(med('apply_seconds'))} | "
                    f"{_num(med('enforcement_seconds'))} | {_num(med('record_seconds'))} | "
                    f"{_num(share, 0)}% |"
                )
    grown = sorted((p.get("sizes") or {}).items(), key=lambda kv: int(kv[0]))
    if len(grown) >= 2:
        (a, _), (b, _) = grown[0], grown[-1]

        def fig(key: str) -> list[tuple[str, float | None]]:
            return [(n, r["seconds"][key]["median"]) for n, r in grown if key in r["seconds"]]

        parts = [
            _grows("portal one by one", fig("portal"), "s"),
            _grows("portal in bulk", fig("portal_bulk"), "s"),
            _grows("kubectl -f DIR", fig("kubectl_directory"), "s"),
            _grows("kubectl one object at a time", fig("kubectl_one_at_a_time"), "s"),
        ]
        out += ["", f"How it grows from {a} to {b} grants: " + "; ".join(parts) + "."]
    return out


def _collector(c: Json) -> list[str]:
    out = [
        "## 2. Collector",
        "",
        f"`manage.py collect_utilisation` as a subprocess on a testbed with N extra 8-GPU kwok nodes and "
        f"{c.get('pods_per_node', 10)} pods per node, created with `spec.nodeName` set (the scheduler is "
        "skipped; kwok marks them Running) and one GPU each. First view: from starting the process (Python "
        "and Django start-up included) until the pool's published GPU count equals the pods and the cluster "
        f"is live. Churn: {c.get('step_seconds', 10):.0f} s steps of create/delete (2 creates per delete) at "
        "rising target rates; the pod watch events of each step are counted on a watch of the bench's own "
        "(opened again from its last resourceVersion when the apiserver closes it); "
        f"kept up = the figures caught up within {c.get('lag_ok_seconds', 3):.0f} s after the step; the "
        "sustained figure is the highest event rate of a kept-up step (the load generator shares the cores "
        f"and may fall short of its target). Fragments: {c.get('web', '')}; sequential "
        "HTMX polls (5/s per fragment), from a process of their own as a browser's are (in the bench's "
        "process they waited for its interpreter lock behind the load generator), of the dashboard's live "
        "overview (pool cards) and the bench pool's "
        "live region (node grid) during the churn, each full render followed by the conditional poll a "
        "browser sends next (If-None-Match: the render's ETag); 304 = answered not modified, without "
        "rendering (a collector write in between makes it a full render instead).",
    ]
    if (tb := c.get("testbed")) is not None:
        out += [
            "",
            f"Testbed for thousands of nodes: kwokctl heartbeat factor {tb.get('heartbeat_factor'):g} (node "
            "leases renewed every 5 minutes rather than every 50 s, the controller-manager's grace period "
            f"scaled with them), kwok logging at {tb.get('kwok_log_level')}, and no Karpenter or Kueue "
            "process (their CRDs and NodePools are applied; the collector lists and watches them as usual). "
            "Pods are created once per size and kept across repeats; each first view is measured once kwok "
            "has marked every pod Running. Pod list = the collector's own timing of its pod list (in its "
            "log), part of the first view. The largest size has fewer first-view repeats (n below): each "
            "starts a collector that lists every pod again.",
        ]
    if (settle := c.get("settle")) is not None:
        out += [
            "",
            "Each first view, and the churn, begins once the testbed has settled: its own processes (etcd, "
            "the apiserver, controller-manager and scheduler, kwok) using less than "
            f"{settle['cores']:g} of a core over a {settle['window_seconds']:g} s window (waited for up "
            f"to {settle['timeout_seconds']:g} s; Settle s = how long). Right after kwok marked tens of "
            "thousands of pods Running, or after a collector's first list, they stay busy for a while, and "
            "a figure measured then measured their aftermath on the shared cores, not the collector (at "
            "5,000 nodes the first view right after the pods were created was always about 8 s slower than "
            "the next).",
        ]
    out += [
        "",
        "| Nodes | Pods | Pod creation/s | Settle s | First view s | Pod list s | RSS MiB | Peak RSS MiB | "
        "Sustained events/s | Overview p50/p95 ms | Overview 304 p50/p95 ms | Pool p50/p95 ms | "
        "Pool 304 p50/p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in c.get("sizes", {}).items():
        frag = " | ".join(
            f"{_num(f['p50_ms'], 0)} / {_num(f['p95_ms'], 0)} ({f['requests']} req)" if f else "n/a"
            for f in (r["fragments"].get(k) for k in ("overview", "overview_304", "pool", "pool_304"))
        )
        out.append(
            f"| {n} | {r['pods']:,} | {_num(r['pod_create_per_s'], 0)} | {_settled(r)} | "
            f"{_s(r['first_view'])} | "
            f"{_s(r.get('pod_list_seconds'), 1)} | {_s(r['rss_mib'], 0)} | {_num(_peak_rss(r), 0)} | "
            f"{_num(r['sustained_events_per_s'], 0)} | {frag} |"
        )
    out += ["", "Churn steps (target writes/s → achieved writes/s, watch events/s, lag after the step):", ""]
    for n, r in c.get("sizes", {}).items():
        steps = ", ".join(
            f"{s['target_ops_per_s']}→{_num(s['achieved_ops_per_s'], 0)} ({_num(s['watch_events_per_s'], 0)} "
            f"ev/s, {_num(s['lag_seconds'], 2)} s{'' if s['kept_up'] else ', not kept up'}"
            f"{_reconnects(s.get('watch_reconnects', 0))})"
            for s in r.get("churn", [])
        )
        out.append(f"- {n} nodes: {steps}; fragment errors: {r.get('fragment_errors', 0)}")
    out += _cores(c)
    out += _niced(c)
    return out + _growth(c)


def _cores(c: Json) -> list[str]:
    """Who had the 2 cores during each churn step (measured from /proc; older runs did not)."""
    sizes = [
        (n, r["churn"])
        for n, r in c.get("sizes", {}).items()
        if any("cores" in s for s in r.get("churn", []))
    ]
    if not sizes:
        return []
    out = [
        "",
        "Who had the 2 cores during each churn step (cores used on average, by role, the busiest first):",
        "",
    ]
    for n, steps in sizes:
        for s in steps:
            busiest = [
                (role, used)
                for role, used in sorted(s["cores"].items(), key=lambda kv: -kv[1])
                if used >= 0.005
            ]
            roles = ", ".join(f"{role} {_num(used, 2)}" for role, used in busiest)
            total = _num(sum(s["cores"].values()), 2)
            out.append(f"- {n} nodes, {s['target_ops_per_s']} writes/s: {roles} (total {total})")
    return out


def _reconnects(count: int) -> str:
    # The bench's own counting watch, closed by the apiserver when it fell behind and opened again.
    return f", counting watch reopened {count}x" if count else ""


def _profile_text(r: Json) -> str:
    prof = r.get("list_profile")
    if not prof:
        return "not profiled in this run"
    shares = sorted(prof["share_pct"].items(), key=lambda kv: -kv[1])
    return "profiled: " + ", ".join(f"{name} {_num(pct, 0)}%" for name, pct in shares)


def _api(a: Json) -> list[str]:
    out = [
        "## 3. API",
        "",
        f"{a.get('tool', 'wrk')}, {a.get('connections', 10)} connections, {a.get('seconds_per_run', 10)} s "
        f"per run, against {a.get('server', '')} on the bench database. One team lead's API token; list = "
        "`GET /api/v1/capacity-requests/` (first page of 50); create = `POST` of a 1-GPU request that is "
        "submitted at once (validation, the member's role, the pool's capacity figures, the insert, the "
        "state move, its audit rows and the read-back; interactive requests are not auto-approved, so no "
        "pool row lock is taken). The per-token "
        "courtesy throttle is raised for the run, and the cluster pre-flight is off (no cluster in this "
        "section). Rows are bulk-inserted; creates add rows during the run. Query counts: Django test client "
        "under CaptureQueriesContext, after 10 warm-up requests (compiled reads, prepared statements and "
        "PostgreSQL's plans settle as on a server that has been running); the same client times one request "
        "alone (median of 31, in process, no concurrency).",
        "",
        "| Rows | Endpoint | p50 ms | p95 ms | Requests/s | Queries/request | One request alone, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in a.get("sizes", {}).items():
        for ep in ("list", "create"):
            x = r[ep]
            errors = sum(run["non_2xx"] + run["socket_errors"] for run in x["runs"])
            note = f" ({errors} errors)" if errors else ""
            out.append(
                f"| {int(n):,} | {ep} | {_s(x['p50_ms'], 0)} | {_s(x['p95_ms'], 0)} | "
                f"{_s(x['rps'], 1)}{note} | {r['queries_per_request'][ep]} | "
                f"{_num(r.get('in_process_ms', {}).get(ep), 1)} |"
            )
    for n, r in a.get("sizes", {}).items():
        if prof := r.get("list_profile"):
            out += [
                "",
                f"Where one list request's time goes at {int(n):,} rows (cProfile over {prof['requests']} "
                f"requests in process, {_num(prof['profiled_ms_per_request'], 1)} ms each under the "
                f"profiler): {_profile_text(r).removeprefix('profiled: ')}. The PostgreSQL part is the "
                "round trips of 4 queries (token, count, page, decisions), each prepared once per "
                "connection (server-side binding), so none is planned again.",
            ]
    grown = sorted((a.get("sizes") or {}).items(), key=lambda kv: int(kv[0]))
    if len(grown) >= 2:
        (lo, _), (hi, _) = grown[0], grown[-1]
        parts = [
            _grows("list p95", [(n, r["list"]["p95_ms"]["median"]) for n, r in grown], "ms", 0),
            _grows("list alone", [(n, r.get("in_process_ms", {}).get("list")) for n, r in grown], "ms"),
            _grows("create p95", [(n, r["create"]["p95_ms"]["median"]) for n, r in grown], "ms", 0),
        ]
        out += ["", f"How it grows from {int(lo):,} to {int(hi):,} rows: " + "; ".join(parts) + "."]
    return out


def _approvals(a: Json) -> list[str]:
    out = [
        "## 4. Approvals",
        "",
        f"{a.get('processes', 4)} processes approve concurrently on PostgreSQL, requests spread over "
        f"{a.get('pools', 4)} pools of which each can grant only ~80% of what is asked, so refusals are part "
        "of the load; each final approval locks its pool row and re-checks capacity. Pre-flight off (no "
        "cluster). After each run every pool's granted GPUs are checked against its grantable capacity.",
        "",
        "**Bulk**: the same requests decided by one process in batches of 500 "
        "(`capacity_requests_decide`: one locked transaction per pool and batch, every rule checked before a "
        "request's first write, the audit rows of a pool inserted together).",
        "",
        "| Requests | Decisions/s | Bulk decisions/s | Approved / refused (last run) | Capacity violations |",
        "|---|---|---|---|---|",
    ]
    for n, r in a.get("sizes", {}).items():
        last = r["runs"][-1]
        counts = f"{last['approved']} / {last['refused']}"
        bulk = _s(r["bulk_rate"], 1) if "bulk_rate" in r else "n/a"
        out.append(f"| {n} | {_s(r['rate'], 1)} | {bulk} | {counts} | {r['capacity_violations']} |")
    grown = sorted((a.get("sizes") or {}).items(), key=lambda kv: int(kv[0]))
    if len(grown) >= 2 and all("bulk_rate" in r for _, r in grown):
        (lo, _), (hi, _) = grown[0], grown[-1]
        parts = [
            _grows("one by one", [(n, r["rate"]["median"]) for n, r in grown], "decisions/s", 0),
            _grows("in bulk", [(n, r["bulk_rate"]["median"]) for n, r in grown], "decisions/s", 0),
        ]
        out += ["", f"How it grows from {lo} to {hi} requests: " + "; ".join(parts) + "."]
    return out


def _elastic(e: Json) -> list[str]:
    out = [
        "## 5. Elastic pools",
        "",
        f"Cluster: {e.get('cluster', '')}. Per bring-up delay (the simulated GPU node bring-up of the "
        "NodePool's nodes), each run creates a pod that follows its grant's contract on an interactive "
        "pool and times it to Running (wall clock, polled every 50 ms): **warm**, on a pool whose one node "
        "of headroom is held by placeholder pods (the pod preempts one; the next run waits until a "
        "replacement node holds the headroom again), and **from zero**, on a fresh pool with no node and "
        "no headroom (Karpenter's claim, the node's bring-up, the bind). Approval to Active is timed on that "
        "zero-node pool: from `capacity_request_approve` (pre-flight from the collector's inventory) until "
        "the request is `active`.",
        "",
        "| Bring-up | Warm s | From zero s | Warm / from zero | Approval to Active s (zero nodes) |",
        "|---|---|---|---|---|",
    ]
    for delay, r in (e.get("delays") or {}).items():
        out.append(
            f"| {delay} s | {_s(r['warm'])} | {_s(r['cold'])} | {_s(r['ratio'], 3)} | "
            f"{_s(r['approval_to_active'])} |"
        )
    delays = sorted((float(d), r) for d, r in (e.get("delays") or {}).items())
    if len(delays) >= 2:
        (d1, r1), (d2, r2) = delays[0], delays[-1]
        slope = (r2["cold"]["median"] - r1["cold"]["median"]) / (d2 - d1)
        out += [
            "",
            f"How it scales: from zero grows with the bring-up delay ({_num(slope)} s per second of bring-up "
            f"between {d1:g} s and {d2:g} s, i.e. bring-up plus a constant of about "
            f"{_num(r1['cold']['median'] - d1, 1)} s for Karpenter's claim and the bind); warm does not "
            f"depend on it ({_num(r1['warm']['median'])} s and {_num(r2['warm']['median'])} s), so the ratio "
            "falls as the bring-up grows. Approval to Active never waits for a node at any delay.",
        ]
    if (lat := e.get("approval_latency")) is not None:
        out += [
            "",
            f"`capacity_request_approve` with the pre-flight on, {lat['samples']} approvals each: live "
            f"cluster p50 {_num(lat['live_ms']['p50'], 1)} ms, p95 {_num(lat['live_ms']['p95'], 1)} ms (no "
            "request to the cluster; the pre-flight alone p50 "
            f"{_num((lat.get('preflight_ms') or {}).get('p50'), 1)} ms, p95 "
            f"{_num((lat.get('preflight_ms') or {}).get('p95'), 1)} ms, the rest is the approval's own "
            "locks, grant and audit rows and queueing the reconcile); a cluster the collector marks stale is "
            "refused in p50 "
            f"{_num(lat['stale_ms']['p50'], 1)} ms, max {_num(lat['stale_ms']['max'], 1)} ms "
            f"({', '.join(lat['stale_reason'])}).",
        ]
    return out


def _noise(sections: Json) -> str:
    spreads = _spreads(sections)
    if not spreads:
        return "n/a"
    return f"median {spreads[len(spreads) // 2]:.0f}%, worst {spreads[-1]:.0f}%"


def _spreads(sections: Json) -> list[float]:
    """Every (max - min) / median of a figure measured more than once, sorted."""
    spreads: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "spread_pct" in x and x.get("runs", 0) > 1 and x["spread_pct"] is not None:
                spreads.append(x["spread_pct"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(sections)
    return sorted(spreads)


def worst_spread(sections: Json) -> float | None:
    spreads = _spreads(sections)
    return spreads[-1] if spreads else None


def headlines(sections: Json) -> dict[str, float]:
    """The figures the targets are about, at each section's largest size: what a later run is held to."""
    out: dict[str, float] = {}
    if (big := _largest(sections.get("provisioning") or {})) is not None:
        n, r = big
        out[f"provisioning {n} grants, portal s"] = r["seconds"]["portal"]["median"]
        out[f"provisioning {n} grants, kubectl -f DIR s"] = r["seconds"]["kubectl_directory"]["median"]
        out[f"provisioning {n} grants, kubectl one at a time s"] = r["seconds"]["kubectl_one_at_a_time"][
            "median"
        ]
    if (big := _largest(sections.get("collector") or {})) is not None:
        n, r = big
        out[f"collector {n} nodes, first view s"] = r["first_view"]["median"]
        out[f"collector {n} nodes, sustained pod events/s"] = r["sustained_events_per_s"]
        out[f"collector {n} nodes, peak RSS MiB"] = r["peak_rss_mib"]["median"]
        for name, f in r["fragments"].items():
            out[f"collector {n} nodes, {name} fragment p95 ms"] = f["p95_ms"]
    if (big := _largest(sections.get("api") or {})) is not None:
        n, r = big
        for name in ("list", "create"):
            out[f"API {n} rows, {name} p95 ms"] = r[name]["p95_ms"]["median"]
            out[f"API {n} rows, {name} requests/s"] = r[name]["rps"]["median"]
    if (big := _largest(sections.get("approvals") or {})) is not None:
        n, r = big
        out[f"approvals {n} requests, decisions/s"] = r["rate"]["median"]
    queueing = sections.get("queueing") or {}
    if first := ((queueing.get("first_admission") or {}).get("seconds") or {}).get("first_admitted_seconds"):
        out["queueing, approval to first Job admitted s"] = first["median"]
    for queues, r in (queueing.get("sizes") or {}).items():
        out[f"queueing, 1,000 queued in {queues} queue(s), admissions/s"] = r["admissions_per_second"][
            "median"
        ]
    return out


# Kueue's own scalability test (test/performance/scheduler, configs/baseline): 15,000 Workloads in
# 30 ClusterQueues of 5 cohorts, created at a paced rate and "run" 200-1000 ms each by its runner,
# admitted by minimalkueue against envtest (no kube-scheduler, no Jobs, no pods), in about 351 s.
KUEUE_BASELINE_PER_SECOND = 15_000 / 351.1


def _queueing(q: Json) -> list[str]:
    first = (q.get("first_admission") or {}).get("seconds") or {}
    out = [
        "## 6. Queueing through Kueue",
        "",
        f"Cluster: {q.get('cluster', '')}; {q.get('worker', '')}.",
        "",
        "- **First admission**: a batch request of 8 GPUs approved by a platform admin (pre-flight on); a "
        "client creates a Job naming the grant's LocalQueue every 50 ms until the cluster accepts it, and "
        "the clock stops when Kueue admits it. Times from the approval call.",
        "",
        "| Approval to | Seconds |",
        "|---|---|",
        f"| a Job accepted (namespace, policy, queue in place) | {_s(first.get('job_accepted_seconds'))} |",
        f"| the first Job admitted by Kueue | {_s(first.get('first_admitted_seconds'))} |",
        f"| the grant Active (every condition True) | {_s(first.get('grant_active_seconds'))} |",
        f"| the portal showing it admitted | {_s(first.get('portal_shows_seconds'))} |",
        "",
        "- **Admissions at 1,000 queued Jobs**: Q grants hold 1,000 GPUs of nominal quota between them; a "
        "blocker Job takes each queue's whole quota, 1,000 one-GPU Jobs are created behind them, and the "
        "clock starts when the blockers are deleted. Admissions/s = 1,000 / time until the ClusterQueues "
        "report all admitted (polled every 0.25 s). Kueue's span: first to last admission by its own "
        "(whole-second) timestamps.",
        "",
        "| Queues | Admissions/s (end to end) | Kueue first to last admission s | Kueue's own admissions/s "
        "| Portal shows all after s | Jobs created/s |",
        "|---|---|---|---|---|---|",
    ]
    for queues, r in (q.get("sizes") or {}).items():
        runs = r["runs"]

        def median(key: str, runs: list[Json] = runs) -> float | None:
            values = [run[key] for run in runs if run.get(key) is not None]
            return statistics.median(values) if values else None

        out.append(
            f"| {queues} | {_s(r['admissions_per_second'], 1)} | {_num(median('kueue_span_seconds'), 0)} | "
            f"{_num(median('kueue_admissions_per_second'), 1)} | {_s(r['portal_shows_seconds'], 1)} | "
            f"{_num(median('creates_per_second'), 0)} |"
        )
    out += [
        "",
        f"Kueue's published baseline is about {_num(KUEUE_BASELINE_PER_SECOND, 0)} admissions/s: its "
        "scalability test admits 15,000 Workloads in about 351 s. The setups differ: there, 30 "
        "ClusterQueues in 5 cohorts are scheduled in parallel (Kueue takes the head of every queue each "
        "cycle) while here one or ten portal queues drain a backlog; there Workloads are created directly "
        "and finish after 200-1000 ms under a minimal Kueue in envtest, with no kube-scheduler and no pods, "
        "while here every admission is a real batch/v1 Job that Kueue unsuspends and whose pod the Job "
        "controller creates, the scheduler binds and kwok runs, all on the same 2 cores as PostgreSQL, "
        "the worker and the collector, with Kueue's default client limit of 50 requests/s.",
    ]
    return out


def _reproduction(data: Json) -> list[str]:
    previous = data.get("previous")
    if not previous:
        return []
    # Only what this run measured: sections kept from the report it replaced (--only) would compare
    # with themselves.
    measured = data.get("measured") or list(data["sections"])
    now = headlines({k: v for k, v in data["sections"].items() if k in measured})
    tolerance = max(
        (x for x in (worst_spread(data["sections"]), previous.get("worst_spread_pct")) if x is not None),
        default=None,
    )
    out = [
        "## Against the previous report",
        "",
        f"The same figures in the report this run replaced ({previous['generated_at']}, mode "
        f"{previous['mode']}). A change counts as noise when it is within the worst spread over "
        f"repeated runs of either report ({_num(tolerance, 0)}%); single-run figures (sustained events/s, "
        "fragment p95) have no spread of their own and are held to the same bound. Between runs of the "
        "same code, a change beyond it is a figure that does not reproduce; across a code change, it is "
        "that change's effect.",
        "",
        "| Figure | Previous | This run | Change | Within the noise |",
        "|---|---|---|---|---|",
    ]
    for name, value in now.items():
        before = previous["headlines"].get(name)
        if not before or value is None:
            continue
        change = (value - before) / before * 100
        within = "n/a" if tolerance is None else ("yes" if abs(change) <= tolerance else "**no**")
        out.append(f"| {name} | {_num(before)} | {_num(value)} | {change:+.0f}% | {within} |")
    return [*out, ""]


def _modes(sections: Json) -> str:
    """Sections kept from an earlier run (`--only`) may come from the other mode: say which."""
    modes = {name: x.get("mode") for name, x in sections.items() if x.get("mode")}
    if len(set(modes.values())) <= 1:
        return ""
    return " Sections by mode: " + ", ".join(f"{name} {mode}" for name, mode in modes.items()) + "."


def markdown(data: Json) -> str:
    m, s = data["machine"], data["sections"]
    out = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` ({data['command']}, mode **{data['mode']}**) at {data['generated_at']}. "
        "Do not edit: re-run to regenerate; the raw figures are in `docs/benchmarks.json`." + _modes(s),
        "",
        "## How to read this",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; Python {m['python']}, "
        f"Django {m['django']}, {m['postgresql']}, {m['redis']}.",
        "- Versions: " + "; ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".",
        "- Each figure is the **median over N runs with min-max** in brackets. Ratios (portal / baseline) "
        "are computed per run from measurements taken in the same run, on the same cluster, with the same "
        "manifests.",
        "- Noise: the machine is shared (other work ran on the same 2 cores; the load average before and "
        "after each section is in the JSON). Spread (max - min) / median over repeated runs: "
        f"{_noise(s)}. Figures reproduce within that spread on an equally loaded machine; on an idle one "
        "expect lower latencies.",
        "- Baselines: provisioning is compared with kubectl applying the very same manifests one object at a "
        "time and as one directory; the other sections have absolute targets.",
        "- Sizes: every section runs at two sizes to show how it scales"
        + " (a section run with --quick uses fewer repeats and shorter API runs, and provisions 10 and 50 "
        "grants instead of 50 and 200; each section's footer names its mode).",
        "",
        "## Targets",
        "",
        *_targets(s),
        "",
        *_reproduction(data),
    ]
    renderers = (
        ("1. Provisioning", "provisioning", _provisioning),
        ("2. Collector", "collector", _collector),
        ("3. API", "api", _api),
        ("4. Approvals", "approvals", _approvals),
        ("5. Elastic pools", "elastic", _elastic),
        ("6. Queueing through Kueue", "queueing", _queueing),
    )
    for title, name, render in renderers:
        section = s.get(name)
        if section is None:
            out += [f"## {title}", "", "Not run.", ""]
            continue
        if "error" in section:
            out += [f"## {title}", "", f"Failed: `{section['error']}`", ""]
            continue
        footer = (
            f"Mode {section.get('mode', data['mode'])}; wall time {section['wall_seconds']:.0f} s; "
            f"load average before {section['load_average_before']}, after {section['load_average_after']}."
        )
        out += [*render(section), "", footer, ""]
    return "\n".join(out)
