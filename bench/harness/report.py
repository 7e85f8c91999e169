"""The printed tables: one row per figure, one column per server (or per
set-up of the relay), and ratios between columns."""

from __future__ import annotations

from typing import Any

# scenario prefix -> (result key, label, format); everything else stays in the JSON only.
# A row whose every cell would be empty is left out.
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "S1": [
        ("connect_rate", "connect rate (conn/s)", "{:,.0f}"),
        ("rss_per_conn_kib", "server RSS per connection (KiB)", "{:.1f}"),
        ("server_cpu_us_per_conn", "server CPU per connection (us)", "{:,.0f}"),
        ("redis_cpu_pct", "redis-server CPU (% of a core)", "{:.0f}"),
        ("failed", "failed connections", "{}"),
        ("loadgen_cpu_us_per_conn", "load generator CPU per connection (us)", "{:,.0f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
    "S2": [
        ("publish_rate", "events published /s", "{:,.0f}"),
        ("events_per_publish", "events per publish", "{:,.0f}"),
        ("delivery_rate", "deliveries /s", "{:,.0f}"),
        ("server_cpu_us_per_delivery", "server CPU per delivery (us)", "{:.2f}"),
        ("server_cpu_pct", "server CPU (% of a core)", "{:.0f}"),
        ("redis_cpu_pct", "redis-server CPU (% of a core)", "{:.0f}"),
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
        ("background_delivery_rate", "background S2 deliveries /s", "{:,.0f}"),
        ("server_cpu_pct", "server CPU (% of a core)", "{:.0f}"),
        ("redis_cpu_pct", "redis-server CPU (% of a core)", "{:.0f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
    ],
    "S4": [
        ("round_trip_rate", "round trips /s", "{:,.0f}"),
        ("latency_p50_ms", "round trip p50 (ms)", "{:.2f}"),
        ("latency_p99_ms", "round trip p99 (ms)", "{:.2f}"),
        ("latency_max_ms", "round trip max (ms)", "{:.2f}"),
        ("unanswered", "questions unanswered for 5 s", "{}"),
        ("sockets_closed", "sockets the server closed", "{}"),
        ("malformed_frames", "frames that are not JSON", "{}"),
        ("events_per_webhook", "client events per webhook", "{:.1f}"),
        ("server_cpu_pct", "server CPU (% of a core)", "{:.0f}"),
        ("redis_cpu_pct", "redis-server CPU (% of a core)", "{:.0f}"),
        ("backend_cpu_pct", "backend processes CPU (% of a core)", "{:.0f}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
    ],
    "storm": [
        ("all_subscribed_s", "all subscribed after (s)", "{:.2f}"),
        ("connect_s", "all connected after (s)", "{:.2f}"),
        ("server_cpu_us_per_conn", "server CPU per connection (us)", "{:,.0f}"),
        ("server_cpu_pct", "server CPU (% of a core)", "{:.0f}"),
        ("rss_peak_mib", "server peak RSS (MiB)", "{:,.1f}"),
        ("failed", "failed connections", "{}"),
        ("loadgen_cpu_pct", "load generator CPU (% of a core)", "{:.0f}"),
        ("machine_busy_pct", "all cores busy (%)", "{:.0f}"),
        ("others_cpu_pct", "  of which other processes (%)", "{:.0f}"),
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


def rows_for(scenario: str) -> list[tuple[str, str, str]]:
    """The figures shown for a scenario (by its first word, or "storm")."""
    return ROWS["storm" if "storm" in scenario else scenario.split(maxsplit=1)[0]]


def table(
    results: dict[str, dict[str, dict[str, Any]]], columns: list[str], ratios: list[tuple[str, str]]
) -> str:
    """Scenarios that ran in at least one of ``columns``; ``ratios``: (numerator, denominator) columns."""
    header = ["scenario", "figure", *columns, *(f"{a}/{b}" for a, b in ratios)]
    lines: list[list[str]] = [header]
    footer: list[str] = []
    for scenario, by_server in results.items():
        if not any(c in by_server for c in columns):
            continue
        errors = {s: by_server[s]["error"] for s in columns if "error" in by_server.get(s, {})}
        first = True
        for key, label, fmt in rows_for(scenario):
            cells = ["ERROR" if s in errors else _cell(by_server.get(s, {}).get(key), fmt) for s in columns]
            if all(c == "-" for c in cells):
                continue
            row = [scenario if first else "", label, *cells]
            row += [_ratio(by_server.get(a, {}).get(key), by_server.get(b, {}).get(key)) for a, b in ratios]
            lines.append(row)
            first = False
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
