#!/usr/bin/env python3
"""wordcount: an ARCP agent in Python (standard library only), run by
arcp-gateway once per job.

Protocol (docs/agents.md): the job arrives as one JSON
line on standard input; every line written to standard output is one JSON
message: {"kind": ..., "body": ...} events, then {"result": ...} or
{"error": {...}}, or a result streamed as `result_chunk` events whose last
one has "more": false. Standard error becomes `log` events.

Input:
  text            the text to count (required, a string)
  model           the model this agent pretends to use (default "tier-fast/wordcount");
                  reported as a metric with dimensions.model, which the gateway
                  checks against the lease's model.use patterns (§9.7)
  price_per_word  cost reported per line as a `cost.inference` metric in USD
                  (default 0); the gateway charges it to the job's cost.budget (§9.6)
  delay_ms        pause after each line (default 0)
  chunk_size      when set, the report is streamed as result_chunk events of at
                  most this many characters (§8.4) instead of returned inline
"""

import json
import os
import sys
import time


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def event(kind, **body):
    emit({"kind": kind, "body": body})


def fail(code, message):
    emit({"error": {"code": code, "message": message, "retryable": False}})
    sys.exit(0)


def main():
    job = json.loads(sys.stdin.readline())
    params = job.get("input") or {}
    if not isinstance(params, dict):
        fail("INVALID_REQUEST", "input must be an object")
    text = params.get("text")
    if not isinstance(text, str):
        fail("INVALID_REQUEST", "input.text must be a string")
    model = params.get("model", "tier-fast/wordcount")
    price = float(params.get("price_per_word", 0))
    delay = float(params.get("delay_ms", 0)) / 1000.0
    chunk_size = params.get("chunk_size")

    event("status", phase="started", message="counting words", pid=os.getpid())
    print(f"wordcount: job {job['job_id']} trace {job['trace_id']}", file=sys.stderr, flush=True)

    counts = {}
    lines = text.splitlines() or [""]
    for number, line in enumerate(lines, start=1):
        words = line.split()
        for word in words:
            word = word.strip(".,;:!?\"'()").lower()
            if word:
                counts[word] = counts.get(word, 0) + 1
        event(
            "metric",
            name="model.tokens",
            value=len(words),
            unit="tokens",
            dimensions={"model": model},
        )
        if price > 0:
            event("metric", name="cost.inference", value=round(price * len(words), 6), unit="USD")
        event("progress", current=number, total=len(lines), units="lines")
        if delay:
            time.sleep(delay)

    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
    if not chunk_size:
        emit({"result": {"words": total, "distinct": len(counts), "top": top}})
        return

    report = "".join(f"{word}\t{count}\n" for word, count in sorted(counts.items()))
    pieces = [report[i : i + int(chunk_size)] for i in range(0, len(report), int(chunk_size))] or [""]
    for seq, piece in enumerate(pieces):
        # result_id, chunk_seq and encoding may be left to the gateway.
        event("result_chunk", data=piece, more=seq + 1 < len(pieces))


if __name__ == "__main__":
    main()
