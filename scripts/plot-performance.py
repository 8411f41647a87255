#!/usr/bin/env python3
"""Plots latency percentiles against load from the gateway benchmark's JSON.

Usage:
    cargo bench --bench gateway -- --json docs/performance.json
    python3 scripts/plot-performance.py docs/performance.json docs/performance.png

Needs matplotlib (pip install matplotlib). Reads the rows the benchmark wrote
for the live and fan-out scenarios and draws p50/p99/max emit-to-client
latency for the gateway and the baseline at each load.
"""

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(rows, kind):
    """{(label, percentile): [(load, gateway_ms, baseline_ms)]} for one scenario kind."""
    points = {}
    for row in rows:
        scenario = row["scenario"]
        if not scenario.startswith(kind) or "latency" not in row["metric"]:
            continue
        numbers = [int(n) for n in re.findall(r"(\d+) (?:sessions|subscribers)", scenario)]
        if not numbers:
            continue
        percentile = row["metric"].split()[0]
        points.setdefault(percentile, []).append((numbers[0], row["gateway"], row["baseline"]))
    return {k: sorted(v) for k, v in points.items()}


def main():
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as handle:
        document = json.load(handle)
    rows = document["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, (kind, title) in zip(axes, [("live", "live: K sessions, 10,000 ev/s total"),
                                           ("fan-out", "fan-out: 1 job to K subscribers, 10,000 ev/s total")]):
        for (percentile, points), color in zip(sorted(series(rows, kind).items()), ["tab:blue", "tab:orange", "tab:red"]):
            loads = [p[0] for p in points]
            axis.plot(loads, [p[1] for p in points], marker="o", color=color, label=f"gateway {percentile}")
            axis.plot(loads, [p[2] for p in points], marker="x", linestyle="--", color=color, label=f"baseline {percentile}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("K (sessions or subscribers)")
        axis.set_ylabel("emit-to-client latency (ms)")
        axis.set_title(title)
        axis.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
        axis.grid(True, which="both", linewidth=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"arcp-gateway vs minimal hyper baseline - {document['machine'].get('cpu', '')}, "
                    f"{document['machine'].get('cores', '?')} cores")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
