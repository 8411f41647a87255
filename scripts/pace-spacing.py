#!/usr/bin/env python3
"""How evenly a paced `firehose` spaces its events (docs/performance.md,
twelfth pass).

Usage:
    cargo build --release
    python3 scripts/pace-spacing.py target/release/arcp-gateway RATE COUNT

Starts the given gateway binary on an ephemeral loopback port, opens one
session's stream, submits a `firehose` of COUNT events at RATE per second,
reads every event's `ts_ns` (the agent's stamp) and prints the gaps between
consecutive stamps: percentiles in microseconds and how many gaps were under
half a period (events that came in pairs). Standard library only.
"""

import json
import re
import socket
import subprocess
import sys
import urllib.request


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, rate, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    gateway = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        stamps = read_stamps(gateway, rate, count)
    finally:
        gateway.kill()
        gateway.wait()
    gaps = sorted((b - a) / 1000 for a, b in zip(stamps, stamps[1:]))
    if not gaps:
        sys.exit("fewer than two events arrived")
    n = len(gaps)
    period = 1e6 / rate
    paired = sum(gap < period / 2 for gap in gaps)
    cuts = " ".join(
        f"p{p} {gaps[min(n - 1, n * p // 100)]:.0f}" for p in (1, 10, 50, 90, 99)
    )
    print(
        f"{len(stamps)} events at {rate}/s (period {period:.0f} us): "
        f"gaps in us {cuts} max {gaps[-1]:.0f}; "
        f"{paired} of {n} under half a period"
    )


def read_stamps(gateway, rate, count):
    base = token = None
    while token is None:
        line = gateway.stdout.readline()
        if not line:
            sys.exit("the gateway exited before printing its token")
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            base = found.group(1)
        found = re.search(r"\(principal `dev`\): (\S+)", line)
        if found:
            token = found.group(1)

    def post(path, body):
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={
                "Authorization": "Bearer " + token,
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    session = post("/v1/sessions", {})["session_id"]
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = socket.create_connection((host, int(port)), timeout=30)
    stream.sendall(
        f"GET /v1/sessions/{session}/events HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    post(
        f"/v1/sessions/{session}/jobs",
        {
            "agent": "firehose",
            "input": {"count": count, "size": 64, "rate": rate, "delay_ms": 200},
        },
    )
    stamps, pending = [], b""
    while len(stamps) < count:
        data = stream.recv(65536)
        if not data:
            break
        pending += data
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        stamps += [int(m) for m in re.findall(rb'"ts_ns":(\d+)', pending[:end])]
        pending = pending[end + 2 :]
    stream.close()
    return stamps


if __name__ == "__main__":
    main()
