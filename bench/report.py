"""The bench's table, targets, JSON and chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

# What the gateway is compared with in the table's ratio rows, and how each is named.
REFERENCES = {"direct": "direct", "nginx": "nginx", "bare": "bare stack"}
TARGETS_TEXT = {
    "rps_c50": "≥ 2,000 requests/s at 50 connections",
    "added_p50_c1_ms": "≤ 1 ms added to p50 at 1 connection",
    "added_ttfb_ms": "≤ 1 ms added to a stream's first byte (answer sent at once)",
    "added_paced_ttfb_ms": "≤ 1 ms added to a stream's first byte (paced answer)",
    "chunks_as_they_arrive": (
        "every chunk relayed as it arrives (paced p99 delay ≤ +1 ms)"
    ),
    "memory_1000_streams_mb": "1,000 open streams in ≤ 300 MB",
    "redis_round_trips": (
        "exactly 1 Redis round trip per request (on its path; charges are written "
        "in batches, at most one per 100 ms)"
    ),
}


def evaluate(result: dict[str, Any], suite: str) -> dict[str, Any]:
    """Each target: the measured value and whether it is met."""
    req = result["requests"][suite]
    streams = result.get("streams", {}).get(suite, {})
    checks: dict[str, Any] = {}
    rps = req["gateway"]["c50"]["rps"]
    checks["rps_c50"] = {"value": rps, "met": rps >= 2000}
    added = req["gateway"]["c1"]["p50_ms"] - req["direct"]["c1"]["p50_ms"]
    checks["added_p50_c1_ms"] = {"value": round(added, 3), "met": added <= 1}
    if streams:
        gw, direct = streams["gateway"], streams["direct"]
        ttfb = gw["ttfb_p50_ms"] - direct["ttfb_p50_ms"]
        checks["added_ttfb_ms"] = {"value": round(ttfb, 3), "met": ttfb <= 1}
        paced = gw["paced_ttfb_p50_ms"] - direct["paced_ttfb_p50_ms"]
        checks["added_paced_ttfb_ms"] = {"value": round(paced, 3), "met": paced <= 1}
        extra = gw["chunk_delay_p99_ms"] - direct["chunk_delay_p99_ms"]
        separate = gw["paced_reads_per_stream"] >= 0.9 * gw["paced_events_per_stream"]
        checks["chunks_as_they_arrive"] = {
            "value": round(extra, 3),
            "reads_per_stream": gw["paced_reads_per_stream"],
            "met": extra <= 1 and separate,
        }
    memory = result.get("memory", {}).get(suite)
    if memory:
        ok = memory["opened"] == memory["streams"] and memory["rss_open_mb"] <= 300
        checks["memory_1000_streams_mb"] = {"value": memory["rss_open_mb"], "met": ok}
    trips = result.get("redis", {}).get("monitor", {}).get(suite)
    if trips:
        value = trips["admission_round_trips_per_request"]
        others = {k: v for k, v in trips["sent"].items() if k != "EVALSHA (admission)"}
        # Settlement is batched: at most one pipelined write per 100 ms, whatever
        # the number of requests (each batch may hold several users' EVALSHAs).
        batches_allowed = trips["seconds"] / 0.1 + 1  # one user: one call a batch
        batched = (
            others.keys() <= {"EVALSHA (settlement)"}
            and others.get("EVALSHA (settlement)", 0) <= batches_allowed
        )
        checks["redis_round_trips"] = {
            "value": value,
            "all_per_request": trips["round_trips_per_request"],
            "met": value == 1.0 and batched,
        }
    return checks


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """A Markdown table: every target, then the gateway's ratios to the references."""
    head = (
        "| suite | path | req/s c1 | p50 c1 ms | p99 c1 ms | req/s c50 | p50 c50 ms "
        "| p99 c50 ms | stream TTFB ms | stream total ms | paced TTFB ms "
        "| chunk delay p99 ms |"
    )
    lines = [head, "|" + "---|" * 12]
    for suite, rows in result["requests"].items():
        streams = result.get("streams", {}).get(suite, {})
        for name, row in rows.items():
            s = streams.get(name, {})
            c1, c50 = row["c1"], row["c50"]
            lines.append(
                f"| {suite} | {name} | {_fmt(c1['rps'], 0)} | {_fmt(c1['p50_ms'], 3)} "
                f"| {_fmt(c1['p99_ms'], 3)} | {_fmt(c50['rps'], 0)} "
                f"| {_fmt(c50['p50_ms'], 3)} | {_fmt(c50['p99_ms'], 3)} "
                f"| {_fmt(s.get('ttfb_p50_ms'), 3)} | {_fmt(s.get('total_p50_ms'))} "
                f"| {_fmt(s.get('paced_ttfb_p50_ms'), 3)} "
                f"| {_fmt(s.get('chunk_delay_p99_ms'), 3)} |"
            )
        for ref in REFERENCES:
            if ref in rows:
                lines.append(_ratio_row(suite, rows, streams, ref))
    return "\n".join(lines)


def _ratio_row(
    suite: str, rows: dict[str, Any], streams: dict[str, Any], ref: str
) -> str:
    gw, base = rows["gateway"], rows[ref]

    def rps(c: str) -> str:
        return f"x{gw[c]['rps'] / base[c]['rps']:.3f}" if base[c]["rps"] else "-"

    def added(c: str, key: str) -> str:
        return f"{gw[c][key] - base[c][key]:+.3f}"

    def stream(key: str) -> str:
        if ref not in streams or "gateway" not in streams:
            return "-"
        return f"{streams['gateway'][key] - streams[ref][key]:+.3f}"

    return (
        f"| {suite} | gateway vs {REFERENCES[ref]} | {rps('c1')} "
        f"| {added('c1', 'p50_ms')} "
        f"| {added('c1', 'p99_ms')} | {rps('c50')} | {added('c50', 'p50_ms')} "
        f"| {added('c50', 'p99_ms')} | {stream('ttfb_p50_ms')} "
        f"| {stream('total_p50_ms')} | {stream('paced_ttfb_p50_ms')} "
        f"| {stream('chunk_delay_p99_ms')} |"
    )


def extras(result: dict[str, Any]) -> str:
    """Memory, Redis and HTTP client figures, and the targets."""
    lines = []
    for suite, rows in result["requests"].items():
        gateway = rows["gateway"]["c50"]
        if "gateway_cpu_us_per_request" in gateway:
            cpu = gateway["gateway_cpu_us_per_request"]
            lines.append(
                f"- {suite}: gateway CPU {cpu} µs per request at c50; garbage "
                f"collections per 1,000 requests by generation "
                f"{gateway.get('gc_collections_per_1000_requests')}"
            )
        spread = rows["gateway"]["c50"].get("runs_rps")
        if spread:
            lines.append(
                f"- {suite}: gateway req/s at c50 in each round "
                + ", ".join(_fmt(r, 0) for r in spread)
                + " (the table shows the median round)"
            )
    for suite, streams in result.get("streams", {}).items():
        if {"direct", "bare", "gateway"} <= streams.keys():
            lines.append(_first_byte_shares(suite, streams))
    for suite, m in result.get("memory", {}).items():
        lines.append(
            f"- {suite}: {m['opened']}/{m['streams']} streams open at once "
            f"(failures {m['failures']}), gateway RSS {m['rss_before_mb']} MB idle → "
            f"{m['rss_open_mb']} MB open (peak {m['peak_mb']} MB)"
        )
    redis = result.get("redis", {})
    for suite, trips in redis.get("monitor", {}).items():
        inner = redis.get("server_commands_per_request", {}).get(suite)
        lines.append(
            f"- {suite}: Redis round trips per request "
            f"{trips['round_trips_per_request']}"
            f" ({trips['sent']} for {trips['requests']} requests in "
            f"{trips['seconds']} s); commands run in Redis per request {inner}"
        )
    limiter = redis.get("limiter")
    if limiter:
        requests = result.get("requests", {})
        for suite in requests:
            p50 = requests[suite]["gateway"]["c1"]["p50_ms"]
            lines.append(
                f"- {suite}: one limiter check p50 {limiter['p50_ms']} ms (p99 "
                f"{limiter['p99_ms']} ms), {100 * limiter['p50_ms'] / p50:.0f} % of "
                f"the gateway's p50 at c1 ({p50} ms); after 2 ms of quiet p50 "
                f"{limiter.get('after_idle_p50_ms', '-')} ms"
            )
    for name, c in result.get("clients", {}).items():
        lines.append(
            f"- pass-through proxy with {name}: {_fmt(c['c50']['rps'], 0)} req/s at "
            f"c50 (p50 {_fmt(c['c50']['p50_ms'], 3)} ms), p50 at c1 "
            f"{_fmt(c['c1']['p50_ms'], 3)} ms, errors {c['c50']['errors']}"
        )
    for suite, checks in result.get("targets", {}).items():
        for key, check in checks.items():
            mark = "met" if check["met"] else "MISSED"
            lines.append(
                f"- target [{suite}] {TARGETS_TEXT[key]}: {check['value']} {mark}"
            )
    return "\n".join(lines)


def _first_byte_shares(suite: str, streams: dict[str, Any]) -> str:
    """How much of the gateway's added first byte the bare stack already adds."""
    direct, bare, gateway = (streams[n] for n in ("direct", "bare", "gateway"))

    def added(key: str) -> str:
        stack = bare[key] - direct[key]
        own = gateway[key] - bare[key]
        return f"the stack {stack:+.3f} ms, Subgate's own work {own:+.3f} ms"

    return (
        f"- {suite}: first byte over a direct call: "
        f"answer sent at once: {added('ttfb_p50_ms')}; "
        f"paced answer: {added('paced_ttfb_p50_ms')}"
    )


def _or_nan(value: Any, suite: str, name: str) -> float:
    """A bar's value; NaN (no bar) where a run has no such figure."""
    try:
        return float(value(suite, name))
    except KeyError:
        return math.nan


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(result["requests"])
    names = [
        n
        for n in ("direct", "nginx", "bare", "gateway")
        if any(n in result["requests"][s] for s in suites)
    ]
    panels = [
        (
            "requests/s at 50 connections (log scale)",
            lambda s, n: result["requests"][s][n]["c50"]["rps"],
        ),
        (
            "p50 ms at 1 connection",
            lambda s, n: result["requests"][s][n]["c1"]["p50_ms"],
        ),
        (
            "p99 ms at 50 connections",
            lambda s, n: result["requests"][s][n]["c50"]["p99_ms"],
        ),
        ("stream TTFB ms", lambda s, n: result["streams"][s][n]["ttfb_p50_ms"]),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    for axis, (title, value) in zip(axes.flat, panels, strict=True):
        width = 0.8 / len(suites)
        rates = title.startswith("requests/s")
        for i, suite in enumerate(suites):
            values = [_or_nan(value, suite, n) for n in names]
            xs = [x + i * width for x in range(len(names))]
            bars = axis.bar(xs, values, width, label=suite)
            axis.bar_label(bars, fmt="{:,.0f}" if rates else "%.3g", fontsize=7)
        if rates:
            axis.set_yscale("log")
        axis.set_xticks([x + width * (len(suites) - 1) / 2 for x in range(len(names))])
        axis.set_xticklabels(names)
        axis.set_title(title)
        axis.legend(fontsize=8)
    m = result["machine"]
    figure.suptitle(f"Subgate gateway, one worker — {m['cpu']} ({m['cores']} cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finish(result: dict[str, Any], out: Path) -> None:
    """Evaluate the targets, print the table and write JSON and PNG."""
    result["targets"] = {suite: evaluate(result, suite) for suite in result["requests"]}
    result["table_markdown"] = table(result)
    print()
    print(result["table_markdown"])
    print()
    print(extras(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nWrote {json_path}")
    try:
        chart(result, out.with_suffix(".png"))
        print(f"Wrote {out.with_suffix('.png')}")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
