"""bench_scale's tables: the figures per N, membership, the offline phase and learning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.simulated import SIM_WRONG_ANSWERS

from scale.learning import POLICY_TEXT
from scale.nodes import HOST

TARGET_ROUTE_P99_US = 1000.0  # at N = 500
TARGET_GOSSIP_S = 3.0  # at N = 500
TARGET_N = 500

# ---------------------------------------------------------------------------
# Report


def fmt(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def verdict(value: float | None, limit: float) -> str:
    return "[red]MISS[/red]" if value is None or value >= limit else "[green]PASS[/green]"


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = results["settings"]
    answer_ms = s["first_token_ms"] + s["tokens"] * s["token_ms"]
    table = Table(
        title="bench_scale: dellm network layer at scale — nodes run a SIMULATED engine (no model)",
        caption=(
            f"SIMULATION: every node's engine streams {s['tokens']} tokens, one per {s['token_ms']:g} ms after "
            f"{s['first_token_ms']:g} ms ({answer_ms:g} ms an answer). Real NodeServer/Membership/FitnessBook/"
            f"Swarm code over websockets on {HOST}; gossip every {s['gossip_interval']:g} s, fan-out "
            f"{s['fanout']}, pool {s['max_connections']} connections, reward max hops {s['reward_max_hops']}. "
            f"Targets at N = {TARGET_N}: routing p99 < {TARGET_ROUTE_P99_US / 1000:g} ms, gossip to all "
            f"< {TARGET_GOSSIP_S:g} s."
        ),
    )
    for header in (
        "N",
        "worker procs",
        "membership converged [s]",
        "route p50 [µs]",
        "route p99 [µs]",
        "gossip to all N [s] median (max)",
        "coordinator bytes / known peer",
        f"fan-out q/s (k=3, {s['concurrency']} in flight)",
    ):
        table.add_column(header, justify="right")
    for r in results["runs"]:
        routing, mem, gossip, thr = (r.get(k) or {} for k in ("routing", "coordinator_state", "gossip", "throughput"))
        conv = r.get("membership") or {}
        if conv.get("converged"):
            conv_text = fmt(conv["converged_s"])
        elif conv:
            conv_text = f"no ({conv.get('complete_nodes', 0)}/{r['n']} in {s['converge_timeout_s']:g} s)"
        else:
            conv_text = "-"
        p99 = routing.get("route_us_p99")
        if gossip:
            reached = min(rep["reached"] for rep in gossip["reps"])
            g_text = (
                f"{fmt(gossip['all_s_median'])} ({fmt(gossip['all_s_max'])})"
                if gossip["all_s_max"] is not None
                else f"not all: {reached}/{r['n']} in {s['gossip_timeout_s']:g} s"
            )
            g_text += " " + verdict(gossip["all_s_max"], TARGET_GOSSIP_S)
        else:
            g_text = "-"
        thr_text = (
            f"{thr['questions_per_s']:.1f} (ideal {thr['ideal_questions_per_s']:.0f})"
            + (f", {sum(thr['failures'].values())} failed" if thr.get("failures") else "")
            if thr
            else "-"
        )
        table.add_row(
            str(r["n"]),
            str(r.get("procs", "-")),
            conv_text,
            fmt(routing.get("route_us_p50"), ".1f"),
            f"{fmt(p99, '.1f')} {verdict(p99, TARGET_ROUTE_P99_US)}" if p99 is not None else "-",
            g_text,
            f"{mem['bytes_per_peer']:,}" if mem else "-",
            thr_text + (f" ERROR: {r['error']}" if r.get("error") else ""),
        )
    console = Console(width=max(160, Console().width))
    console.print(table)
    targets = next((r for r in results["runs"] if r["n"] == TARGET_N), None)
    if targets is not None:
        p99 = (targets.get("routing") or {}).get("route_us_p99")
        g = (targets.get("gossip") or {}).get("all_s_max")
        console.print(
            f"targets at N = {TARGET_N}: routing p99 {fmt(p99, '.1f')} µs {verdict(p99, TARGET_ROUTE_P99_US)}; "
            f"gossip to all {fmt(g)} s (worst of {s['gossip_reps']}) {verdict(g, TARGET_GOSSIP_S)}"
        )
    membership_report(results, console)
    for line in detail_lines(results):
        console.print(line, soft_wrap=True, highlight=False)
    learning_report(results, console)


# Before issue 14 (heartbeat gossip, docs/results.md, measured 2026-11-29): convergence [s] per N;
# a silent peer was suspect after ~50 s and dead after ~130 s at N = 500 (timeouts stretched with log N).
BEFORE_CONVERGED_S = {10: 0.62, 100: 6.43, 500: 31.5}
TARGET_MEMBERSHIP_S = 10.0  # issue 14, N = 500: convergence and failure detected everywhere


def membership_report(results: dict[str, Any], console: Any) -> None:
    """Issue 14's figures per N: convergence, crash detection, false positives, bytes/s and CPU per node."""
    from rich.table import Table

    runs = [r for r in results["runs"] if r.get("steady") or r.get("detection")]
    if not runs:
        return
    s = results["settings"]
    table = Table(
        title=f"membership ({s['membership']}, probe interval {s['probe_interval']:g} s) — issue 14",
        caption=(
            f"steady run {s['fp_run_s']:g} s with {s['drop_rate']:.0%} of SWIM datagrams dropped on purpose; "
            "bytes = payload sent + received by a node over all its websockets and datagrams; "
            "CPU = worker CPU / nodes. 'before' = heartbeat gossip (docs/results.md)."
        ),
    )
    for header in (
        "N",
        "converged [s] from first start (before)",
        "converged [s] after last join",
        "crash -> first dead [s]",
        "crash -> dead everywhere [s]",
        "false positives (dead pairs)",
        "suspect pairs",
        "bytes/s per node",
        "CPU per node [% core]",
    ):
        table.add_column(header, justify="right")
    for r in runs:
        conv, st, det = r.get("membership") or {}, r.get("steady") or {}, r.get("detection") or {}
        before = BEFORE_CONVERGED_S.get(r["n"])
        table.add_row(
            str(r["n"]),
            f"{fmt(conv.get('converged_s'))} ({fmt(before)})",
            fmt(conv.get("after_last_join_s"))
            + (f" {verdict(conv.get('after_last_join_s'), TARGET_MEMBERSHIP_S)}" if r["n"] >= 500 else ""),
            fmt(det.get("first_dead_s")),
            fmt(det.get("all_dead_s"))
            + (f" {verdict(det.get('all_dead_s'), TARGET_MEMBERSHIP_S)}" if r["n"] >= 500 else ""),
            str(st.get("false_positive_pairs", "-")),
            str(st.get("suspect_pairs", "-")),
            fmt(st.get("bytes_per_s_per_node"), ",.0f"),
            fmt(st.get("cpu_pct_per_node"), ".3f"),
        )
    console.print(table)
    rates = {r["n"]: (r.get("steady") or {}).get("bytes_per_s_per_node") for r in runs}
    if rates.get(50) and rates.get(500):
        ratio = rates[500] / rates[50]
        console.print(f"traffic per node N = 500 / N = 50: {ratio:.2f}x (target < 2x) {verdict(ratio, 2.0)}")


def _accuracy_text(s: dict[str, Any]) -> str:
    """The SIMULATION's hidden accuracies in words, from the settings."""
    if s.get("accuracy_spread"):
        (glo, ghi), (olo, ohi) = s["good_range"], s["other_range"]
        return (
            f"{s['good_share']:.0%} of the nodes right with a hidden accuracy drawn from [{glo:g}, {ghi:g}], "
            f"the rest from [{olo:g}, {ohi:g}]"
        )
    return (
        f"{s['good_share']:.0%} of the nodes answer right {s['good_accuracy']:.0%} of the time, "
        f"the rest {s['other_accuracy']:.0%}"
    )


def offline_report(results: dict[str, Any], console: Any) -> None:
    """The route-level learning simulation (no network): both policies per N, mean over seeds."""
    from rich.table import Table

    columns = [(r["n"], policy, f) for r in results["runs"] for policy, f in (r.get("learning_offline") or {}).items()]
    if not columns:
        return
    s = results["settings"]
    table = Table(
        title="bench_scale: routing that learns — route-level SIMULATION (no network, no clock)",
        caption=(
            f"route() -> SIMULATED answers ({_accuracy_text(s)}) in random order -> the pipeline's early stop, "
            f"default vote with the greedy anchor, rewards (stragglers: "
            f"{'rewarded' if s.get('straggler_grace', 1) > 0 else 'cancelled'}) -> fitness, "
            f"{s['learn_questions']} questions in rounds of {s['learn_concurrency']}; mean of "
            f"{s['offline_seeds']} seeds (the accurate share: also the worst seed)."
        ),
    )
    table.add_column("figure")
    for n, policy, _ in columns:
        table.add_column(f"N = {n}\n{POLICY_TEXT.get(policy, policy)}", justify="right")

    def row(label: str, render) -> None:
        table.add_row(label, *(render(f["mean"], f) for _, _, f in columns))

    row("distinct peers used / serving", lambda m, f: f"{m['distinct_peers_used']:.1f} / {m['serving_peers']:.0f}")
    row(
        "busiest peer's share of requests (fair share)",
        lambda m, f: f"{m['busiest_peer_share']:.1%} ({m['fair_share']:.1%})",
    )
    row(
        "Spearman(fitness, hidden accuracy) (ceiling)",
        lambda m, f: f"{m['spearman_fitness_accuracy']:.2f} ({m['spearman_ceiling']:.2f})",
    )
    row(
        "Spearman(posterior mean of agreement, hidden accuracy)",
        lambda m, f: fmt(m.get("spearman_posterior_accuracy")),
    )
    row("Spearman an oracle reaches with the same answers per peer", lambda m, f: fmt(m.get("spearman_bound")))
    row("P(accurate peer's fitness > another's) (AUC)", lambda m, f: f"{m['auc_good_over_rest']:.2f}")
    row("rewards per peer (median)", lambda m, f: fmt(m.get("rewards_per_peer_median"), ".0f"))
    row(
        "accurate peers' share, last W questions (worst seed)",
        lambda m, f: f"{m['good_share_last']:.1%} ({f['min_good_share_last']:.1%})",
    )
    row(
        "swarm accuracy: first W → last W questions",
        lambda m, f: f"{m['accuracy_first']:.1%} → {m['accuracy_last']:.1%}",
    )
    row("most requests in flight at one peer", lambda m, f: f"{m['peak_in_flight']:.0f}")
    console.print(table)


def learning_report(results: dict[str, Any], console: Any) -> None:
    """The routing-that-learns phase: the old rule and the new one side by side, per N (issue 17)."""
    from rich.table import Table

    offline_report(results, console)
    columns = [(r["n"], policy, f) for r in results["runs"] for policy, f in (r.get("learning") or {}).items()]
    if not columns:
        return
    s = results["settings"]
    answer_ms = s["first_token_ms"] + s["tokens"] * s["token_ms"]
    table = Table(
        title="bench_scale: routing that learns who is good — SIMULATED nodes with a hidden accuracy",
        caption=(
            f"SIMULATION: {_accuracy_text(s)}; right answers agree, wrong ones are drawn from "
            f"{SIM_WRONG_ANSWERS} per question; every answer takes {answer_ms:g} ms. A fresh coordinator per "
            "policy (neutral fitness, no evidence) asks the questions with the product's default vote, k = 3."
        ),
    )
    table.add_column("figure")
    for n, policy, _ in columns:
        table.add_column(f"N = {n}\n{POLICY_TEXT.get(policy, policy)}", justify="right")

    def row(label: str, render) -> None:
        table.add_row(label, *(render(f) for _, _, f in columns))

    row(
        "questions (in flight; load ÷ capacity)",
        lambda f: (
            f"{f['questions']} ({f['concurrency']}; {f['load_of_capacity']:.1%})"
            + (f", {f['errors']} failed" if f["errors"] else "")
        ),
    )
    row("distinct peers used / serving", lambda f: f"{f['distinct_peers_used']} / {f['serving_peers']}")
    row(
        "busiest peer's share of requests (fair share)",
        lambda f: f"{fmt(f['busiest_peer_share'], '.1%')} ({f['fair_share']:.1%})",
    )
    row(
        f"latency p50 / p99, ms (p99 ÷ {answer_ms:g} ms)",
        lambda f: (
            f"{fmt(f['latency_ms_p50'], '.0f')} / {fmt(f['latency_ms_p99'], '.0f')} "
            f"({fmt(f['latency_p99_over_answer'], '.1f')}×)"
        ),
    )
    row(
        "Spearman(fitness, hidden accuracy) (ceiling with 2 levels)",
        lambda f: f"{fmt(f['spearman_fitness_accuracy'])} ({fmt(f['spearman_ceiling'])})",
    )
    row("Spearman(posterior mean of agreement, hidden accuracy)", lambda f: fmt(f.get("spearman_posterior_accuracy")))
    row("Spearman an oracle reaches with the same answers per peer", lambda f: fmt(f.get("spearman_bound")))
    row("P(accurate peer's fitness > another's) (AUC)", lambda f: fmt(f["auc_good_over_rest"]))
    row(
        "mean fitness: accurate / rest",
        lambda f: f"{fmt(f['fitness_good_mean'], '.3f')} / {fmt(f['fitness_rest_mean'], '.3f')}",
    )
    row(
        "accurate peers' share of requests, last W questions",
        lambda f: f"{fmt(f['good_share_last'], '.1%')} ({f['good_peers']} peers, W = {f['window']})",
    )
    row(
        "swarm accuracy: first W → last W questions",
        lambda f: f"{fmt(f['accuracy_first'], '.1%')} → {fmt(f['accuracy_last'], '.1%')}",
    )
    row(
        "most requests one node ran at once (capacity)",
        lambda f: (
            f"{f['peak_in_flight']} ({f['capacity']})"
            + (f", {f['peer_failures'].get('overloaded', 0)} refused" if f["peer_failures"].get("overloaded") else "")
        ),
    )
    row("questions/s", lambda f: fmt(f["questions_per_s"], ".1f"))

    def diag(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
        def render(f: dict[str, Any]) -> str:
            d = f.get("diagnosis") or {}
            return f"{fmt((d.get('accurate') or {}).get(key), spec)} / {fmt((d.get('rest') or {}).get(key), spec)}"

        return render

    row("diagnosis, accurate / rest: requests per peer", diag("requests_per_peer", ".0f"))
    row("  share of the greedy first slots", diag("first_slot", ".1%"))
    row("  rewards per request (stragglers cut, no consensus)", diag("rewarded_per_request", ".2f"))
    row("  share of rewards for agreeing", diag("agree_rate", ".1%"))
    row("  RTT estimate, ms", diag("rtt_ms_mean", ".1f"))
    row(
        "coordinator: loop lag p50 / p99 ms, CPU, connects/s",
        lambda f: (
            f"{fmt(c.get('loop_lag_ms_p50'), '.1f')} / {fmt(c.get('loop_lag_ms_p99'), '.0f')}, "
            f"{fmt(c.get('cpu_cores'), '.2f')} cores, {fmt(c.get('connects_per_s'), '.1f')}"
            if (c := f.get("coordinator"))
            else "-"
        ),
    )
    console.print(table)
    for n, policy, f in columns:
        marks = ", ".join(f"{name} {'PASS' if ok else 'MISS'}" for name, ok in f["targets"].items())
        console.print(f"N={n} {policy}: {marks}", soft_wrap=True, highlight=False)


def detail_lines(results: dict[str, Any]) -> list[str]:
    """What explains the table: CPU, event-loop lag, gossip rounds, connection churn, per N."""

    def load(w: dict[str, Any]) -> str:
        return (
            f"workers {w['workers_cpu_cores']} cores, {w['gossip_rounds_per_node_s']} gossip rounds/s per node, "
            f"{fmt(w['cpu_ms_per_node_round'], '.1f')} ms CPU per node-round, loop lag p99 "
            f"{fmt(w['loop_lag_ms_p99_worst'], '.0f')} ms, {w['connects_per_s']:.0f} connects/s"
        )

    lines = []
    for r in results["runs"]:
        n = r["n"]
        conv, gossip, thr = r.get("membership") or {}, r.get("gossip") or {}, r.get("throughput") or {}
        routing = r.get("routing") or {}
        if "route_dellm_us_p50" in routing:
            lines.append(
                f"N={n} routing: default rule p50 {routing['route_us_p50']:.0f} µs, p99 "
                f"{routing['route_us_p99']:.0f} µs; "
                f"the DELLM rule alone (before issue 17) p50 {routing['route_dellm_us_p50']:.0f} µs, p99 "
                f"{routing['route_dellm_us_p99']:.0f} µs, same process and moment"
            )
        if conv:
            links = conv["links"]
            lines.append(
                f"N={n} membership: {load(conv['workers'])}; at the end links alive {links['alive']}, suspect "
                f"{links['suspect']}, dead {links['dead']}, missing {links['missing']} (of {n * (n - 1)})"
            )
        if gossip:
            reps = "; ".join(
                f"{rep['by_push']} by push (last at {fmt(rep['last_push_s'], '.2f')} s, max hops {rep['max_hops']})"
                f" + {rep['by_anti_entropy']} by anti-entropy, p50 {fmt(rep['p50_s'], '.2f')} s"
                for rep in gossip["reps"]
            )
            lines.append(f"N={n} gossip: {reps}; {load(gossip['workers'])}")
        live, state = r.get("coordinator_live_memory"), r.get("coordinator_state")
        if live and state:
            lines.append(
                f"N={n} coordinator memory: {state['bytes_per_peer']:,} B/peer in table+pool+fitness+digest "
                f"(one members frame: {state['members_frame_bytes']:,} B); live Swarm after joining: "
                f"{live['traced_bytes']:,} B for {live['known_peers']} known peers ({live['bytes_per_peer']:,} B/peer, "
                f"{live['pooled_connections']} pooled connections, joined in {live['join_s']} s)"
            )
        if thr:
            reasons = ", ".join(f"{k} {v}" for k, v in thr["peer_failure_reasons"].items()) or "none"
            drops = ", ".join(f"{k} {v}" for k, v in thr["coordinator_busy_drops"].items()) or "none"
            lines.append(
                f"N={n} fan-out: {thr['completed']} questions, latency p50 {fmt(thr['latency_ms_p50'], '.0f')} ms "
                f"p99 {fmt(thr['latency_ms_p99'], '.0f')} ms; {thr['distinct_peers_used']} peers used (top 3 "
                f"took {thr['top3_peer_share']:.0%} of requests); peer failures re-routed: {reasons}; coordinator "
                f"{thr['coordinator_cpu_ms_per_question']} ms CPU/question ({thr['coordinator_cpu_cores']} cores), "
                f"busy connections it dropped: {drops}; {load(thr['workers'])}"
            )
    waited = results.get("waited_for_load")
    lines.append(
        f"machine: {results['machine']['nproc']} cores; 1/5/15-min load average at start {results['load_at_start']}"
        + ("" if not waited else " (after waiting for it)" if results.get("load_ok") else " (waited; still high)")
    )
    return lines
