"""The printed table: one row per figure, one column per server, and the
ratio of each server to the first (the baseline)."""

from __future__ import annotations

from typing import Any

# scenario prefix -> (result key, label, format); everything else stays in the JSON only
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "S1": [
        ("connect_rate", "connect rate (conn/s)", "{:,.0f}"),
        ("rss_per_conn_kib", "server RSS per connection (KiB)", "{:.1f}"),
        ("server_cpu_us_per_conn", "server CPU per connection (us)", "{:,.0f}"),
        ("failed", "failed connections", "{}"),
        ("loadgen_cpu_us_per_conn", "load generator CPU per connection (us)", "{:,.0f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
    "S2": [
        ("publish_rate", "events published /s", "{:,.0f}"),
        ("delivery_rate", "deliveries /s", "{:,.0f}"),
        ("server_cpu_us_per_delivery", "server CPU per delivery (us)", "{:.2f}"),
        ("server_cpu_pct", "server CPU (% of a core)", "{:.0f}"),
        ("lost", "deliveries lost", "{}"),
        ("duplicates", "duplicates (max per subscriber)", "{}"),
        ("subscribers_closed", "subscribers closed by the server", "{}"),
        ("publisher_stalled", "publisher stalled (acks stopped)", "{}"),
        ("rss_max_growth_mib", "server RSS max growth (MiB)", "{:.1f}"),
        ("loadgen_cpu_us_per_delivery", "load generator CPU per delivery (us)", "{:.2f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
    "S3": [
        ("publish_rate", "events published /s", "{:,.0f}"),
        ("latency_p50_ms", "latency p50 (ms)", "{:.2f}"),
        ("latency_p99_ms", "latency p99 (ms)", "{:.2f}"),
        ("latency_max_ms", "latency max (ms)", "{:.2f}"),
        ("lost", "deliveries lost", "{}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
    "S4": [
        ("round_trip_rate", "round trips /s", "{:,.0f}"),
        ("latency_p50_ms", "round trip p50 (ms)", "{:.2f}"),
        ("latency_p99_ms", "round trip p99 (ms)", "{:.2f}"),
        ("latency_max_ms", "round trip max (ms)", "{:.2f}"),
        ("server_cpu_pct", "relay CPU (% of a core)", "{:.0f}"),
        ("backend_cpu_pct", "backend processes CPU (% of a core)", "{:.0f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
    ],
    "S5": [
        ("publish_rate", "events published /s", "{:,.0f}"),
        ("delivery_rate", "deliveries /s to the others", "{:,.0f}"),
        ("lost", "deliveries lost (others)", "{}"),
        ("subscribers_closed", "others closed by the server", "{}"),
        ("rss_max_growth_mib", "server RSS max growth (MiB)", "{:.1f}"),
        ("slow_close_code", "slow consumer close code", "{}"),
        ("slow_server_closed_after_s", "slow consumer closed by server after (s)", "{:.1f}"),
        ("slow_server_send_queue_max_bytes", "slow conn: max server kernel send queue (B)", "{:,}"),
        ("slow_client_recv_queue_max_bytes", "slow conn: max client kernel recv queue (B)", "{:,}"),
        ("slow_received", "slow consumer events received", "{:,}"),
        ("events_sent", "events sent", "{:,}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
}


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _ratio(value: Any, base: Any) -> str:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, base))
    return f"{value / base:.2f}x" if numeric and base else ""


def table(results: dict[str, dict[str, dict[str, Any]]], servers: list[str]) -> str:
    header = ["scenario", "figure", *servers]
    if len(servers) > 1:
        header += [f"{s}/{servers[0]}" for s in servers[1:]]
    lines: list[list[str]] = [header]
    footer: list[str] = []
    for scenario, by_server in results.items():
        errors = {s: r["error"] for s, r in by_server.items() if "error" in r}
        rows = ROWS.get(scenario.split()[0], [])
        for i, (key, label, fmt) in enumerate(rows):
            row = [scenario if i == 0 else "", label]
            row += ["ERROR" if s in errors else _cell(by_server.get(s, {}).get(key), fmt) for s in servers]
            base = by_server.get(servers[0], {}).get(key)
            row += [_ratio(by_server.get(s, {}).get(key), base) for s in servers[1:]]
            lines.append(row)
        footer += [f"{scenario} / {s}: {err}" for s, err in errors.items()]
    widths = [max(len(r[c]) for r in lines) for c in range(len(header))]
    out = []
    for n, r in enumerate(lines):
        numbers = [v.rjust(w) for v, w in zip(r[2:], widths[2:], strict=True)]
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), *numbers]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + footer)
