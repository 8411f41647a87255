#!/usr/bin/env python3
"""A misbehaving agent for the integration tests: input {"do": WHAT, ...}.

Each behaviour is something a real agent may do by mistake (or malice); the
gateway must survive it, say clearly what went wrong, and stop the process.
"""

import json
import os
import signal
import subprocess
import sys
import time


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def event(kind, **body):
    emit({"kind": kind, "body": body})


def main():
    job = json.loads(sys.stdin.readline())
    params = job.get("input") or {}
    what = params.get("do")

    if what == "crash":
        event("status", phase="started", pid=os.getpid())
        event("progress", current=1, total=3)
        event("progress", current=2, total=3)
        raise RuntimeError("rogue: crashed on purpose")

    if what == "exit_silently":
        sys.exit(0)

    if what == "garbage":
        event("status", phase="started", pid=os.getpid())
        print("this is not json at all", flush=True)
        time.sleep(30)

    if what == "not_an_object":
        emit([1, 2, 3])
        time.sleep(30)

    if what == "too_deep":
        # 200 levels: past the gateway's limit (and serde_json's own 128).
        sys.stdout.write('{"result":' + "[" * 200 + "1" + "]" * 200 + "}\n")
        sys.stdout.flush()
        time.sleep(30)

    if what == "duplicate_keys":
        sys.stdout.write('{"result":{"verdict":"safe","verdict":"unsafe"}}\n')
        sys.stdout.flush()
        time.sleep(30)

    if what == "unknown_kind":
        event("delegate", agent="someone-else")
        time.sleep(30)

    if what == "huge_line":
        event("status", phase="started", pid=os.getpid())
        block = "x" * 65536
        sys.stdout.write('{"kind":"log","body":{"level":"info","message":"')
        for _ in range(int(params.get("blocks", 256))):
            sys.stdout.write(block)
        sys.stdout.flush()
        time.sleep(30)

    if what == "flood":
        count = int(params.get("count", 1000))
        for i in range(1, count + 1):
            sys.stdout.write('{"kind":"progress","body":{"current":%d,"total":%d}}\n' % (i, count))
        sys.stdout.flush()
        emit({"result": {"flooded": count}})
        return

    if what == "stderr_flood":
        for i in range(int(params.get("count", 10000))):
            sys.stderr.write("noise %d\n" % i)
        sys.stderr.flush()
        emit({"result": {"noisy": True}})
        return

    if what == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        event("status", phase="started", pid=os.getpid())
        while True:
            time.sleep(1)

    if what == "spawn":
        # A grandchild in the same process group, as a shell pipeline makes.
        child = subprocess.Popen(["sleep", "60"])
        event("status", phase="started", pid=os.getpid(), child=child.pid)
        while True:
            time.sleep(1)

    if what == "tools":
        for number, tool in enumerate(params.get("tools", []), start=1):
            event("tool_call", tool=tool, args={"n": number}, call_id=f"call-{number}")
        for model in params.get("models", []):
            event("metric", name="model.tokens", value=10, unit="tokens", dimensions={"model": model})
        time.sleep(float(params.get("linger_ms", 0)) / 1000.0)
        emit({"result": {"done": True}})
        return

    if what == "bad_chunks":
        event("result_chunk", data="a", more=True)
        event("result_chunk", chunk_seq=5, data="b", more=False)
        time.sleep(30)

    if what == "chunks_then_inline":
        event("result_chunk", data="a", more=True)
        emit({"result": "inline, after chunks"})
        time.sleep(30)

    if what == "base64_chunks":
        event("result_chunk", result_id="res_mine", data="aGVsbG8g", encoding="base64", more=True)
        event("result_chunk", result_id="res_mine", data="d29ybGQ=", encoding="base64", more=False)
        return

    if what == "error":
        emit({"error": {"code": params.get("code", "INTERNAL_ERROR"), "message": "rogue failed as asked"}})
        return

    if what == "result_then_linger":
        emit({"result": {"early": True, "pid": os.getpid()}})
        event("status", phase="after the result")
        time.sleep(30)
        return

    if what == "env":
        emit({"result": {"env": dict(os.environ), "cwd": os.getcwd()}})
        return

    emit({"error": {"code": "INVALID_REQUEST", "message": f"unknown behaviour {what!r}"}})


if __name__ == "__main__":
    main()
