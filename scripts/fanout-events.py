#!/usr/bin/env python3
"""Per-event view of fan-out latencies written by the gateway bench's
`--latencies DIR` option (one JSON file per row, column and run: a list
per reader of its latencies in ns, in the order it read its events).

    python3 scripts/fanout-events.py DIR/fanout-100x100-*.json

For each file: the p50 and p99 over events of the first subscriber's
read, the last subscriber's, and the spread between them (µs), then how
many events the slowest 1 % of all deliveries came from. Standard
library only.
"""
import json
import sys


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(path):
    with open(path) as file:
        readers = [reader for reader in json.load(file) if reader]
    if not readers:
        return f"{path}: no latencies"
    events = min(len(reader) for reader in readers)
    firsts, lasts = [], []
    for event in range(events):
        seen = [reader[event] for reader in readers]
        firsts.append(min(seen))
        lasts.append(max(seen))
    spreads = [last - first for first, last in zip(firsts, lasts)]
    every = [reader[event] for reader in readers for event in range(events)]
    p99 = percentile(every, 0.99)
    slow_events = {
        event
        for reader in readers
        for event in range(events)
        if reader[event] >= p99
    }

    def us(values):
        return f"{percentile(values, 0.5) / 1000:.0f} ({percentile(values, 0.99) / 1000:.0f})"

    return (
        f"{path}: {len(readers)} readers x {events} events; p50 (p99) in µs: "
        f"first read {us(firsts)}, last read {us(lasts)}, spread {us(spreads)}; "
        f"the slowest 1 % of deliveries (>= {p99 / 1000:.0f} µs) came from "
        f"{len(slow_events)} of {events} events"
    )


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        print(describe(path))


if __name__ == "__main__":
    main()
