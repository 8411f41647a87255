#!/usr/bin/env python3
"""Plots latency percentiles against load from the gateway benchmark's JSON.

Usage:
    cargo bench --bench gateway -- --json docs/performance.json
    python3 scripts/plot-performance.py docs/performance.json docs/performance.png

Needs matplotlib (pip install matplotlib). Reads the live and fan-out rows
(the median over runs when the bench ran with --runs) and draws p50 (dashed)
and p99 (solid) emit-to-client latency against K, one colour per column
(gateway, hyper, plain, floor, nchan; a column the row does not have, or that
was missing, is left out): live at 10,000 ev/s in total, and fan-out at each
total delivery rate the run measured.
"""

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {
    "gateway": "tab:blue",
    "hyper": "tab:orange",
    "plain": "tab:green",
    "floor": "tab:grey",
    "nchan": "tab:red",
}


def panels(rows):
    """{panel title: {(column, percentile): [(K, ms)]}} for live and fan-out."""
    out = {}
    for row in rows:
        scenario, metric = row["scenario"], row["metric"]
        if metric not in ("p50 latency", "p99 latency"):
            continue
        live = re.match(r"live (\d+) sessions, (\d+) ev/s total", scenario)
        fanout = re.match(r"fan-out 1 job -> (\d+) subscribers .*, (\d+) deliveries/s total", scenario)
        if live:
            load, title = int(live.group(1)), f"live: K sessions, {int(live.group(2)):,} ev/s total"
        elif fanout:
            load = int(fanout.group(1))
            title = f"fan-out: 1 job to K subscribers, {int(fanout.group(2)):,} deliveries/s total"
        else:
            continue
        percentile = metric.split()[0]
        for column, value in row["columns"].items():
            if isinstance(value, (int, float)):
                out.setdefault(title, {}).setdefault((column, percentile), []).append((load, value))
    return out


def main():
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as handle:
        document = json.load(handle)
    found = panels(document["rows"])
    if not found:
        sys.exit("no live or fan-out latency rows in " + source)
    figure, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 4.8), squeeze=False)
    for axis, (title, series) in zip(axes[0], sorted(found.items(), key=lambda item: (not item[0].startswith("live"), item[0]))):
        for (column, percentile), points in sorted(series.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points],
                      marker="o" if percentile == "p99" else "x",
                      linestyle="-" if percentile == "p99" else "--",
                      color=COLOURS.get(column, "black"), label=f"{column} {percentile}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("K (sessions or subscribers)")
        axis.set_ylabel("emit-to-client latency (ms)")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", linewidth=0.3)
        axis.legend(fontsize=7)
    machine = document.get("machine", {})
    runs = document.get("runs", 1)
    figure.suptitle(f"arcp-gateway beside hyper, plain writer, raw-socket floor and nchan - "
                    f"{machine.get('cpu', '')}, {machine.get('cores', '?')} cores"
                    + (f", median of {runs} runs" if runs > 1 else ""))
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
