#!/usr/bin/env python3
"""shouter: an ARCP agent served over HTTP (Python standard library only).

arcp-gateway POSTs each job as JSON to /run (or /run-sse) and reads the
answer as it streams: NDJSON lines (or SSE events whose data are the same
lines): {"kind": ..., "body": ...} events, then {"result": ...} or
{"error": {...}}. See docs/agents.md.

Input: {"text": "...", "interval_ms": 0}. The agent shouts the text back one
word at a time (a `progress` event per word), then returns
{"shouted": "TEXT", "traceparent": "<the W3C trace context it got>"}.

Routes:
  POST /run        the agent, answering NDJSON
  POST /run-sse    the agent, answering text/event-stream
  POST /cancel     the gateway's cancel notice {"job_id", "reason"}; recorded
  GET  /cancelled  the job ids of the cancel notices received so far
  POST /stall      accepts the job and never answers (to try idle timeouts)
  POST /stall-mid  answers one event, then stalls
  POST /fail       answers 500
  POST /reject     answers 422 with an ARCP error body

Usage: http_agent.py [--host 127.0.0.1] [--port 9000] [--token SECRET]
With --token, every route but /cancelled wants `Authorization: Bearer SECRET`.
The first line printed is "listening on http://HOST:PORT".
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANCELLED = []
CANCELLED_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the answer streams until the connection closes.
    protocol_version = "HTTP/1.0"
    token = None

    def log_message(self, format, *args):
        pass

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        if self.token is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.token}":
            return True
        self.answer(401, "text/plain", b"unauthorized\n")
        return False

    def do_GET(self):
        if self.path == "/cancelled":
            with CANCELLED_LOCK:
                body = json.dumps(CANCELLED).encode()
            self.answer(200, "application/json", body)
        else:
            self.answer(404, "text/plain", b"not found\n")

    def do_POST(self):
        if not self.authorized():
            return
        route = self.path.split("?")[0]
        if route == "/cancel":
            notice = self.read_json()
            with CANCELLED_LOCK:
                CANCELLED.append(notice.get("job_id"))
            self.answer(204, "text/plain", b"")
        elif route in ("/run", "/run-sse"):
            self.run_job(self.read_json(), sse=route == "/run-sse")
        elif route == "/stall":
            self.read_json()
            time.sleep(60)
        elif route == "/stall-mid":
            self.read_json()
            self.start_stream(sse=False)
            self.send_line({"kind": "status", "body": {"phase": "started"}}, sse=False)
            time.sleep(60)
        elif route == "/fail":
            self.read_json()
            self.answer(500, "text/plain", b"the shouter fell over\n")
        elif route == "/reject":
            self.read_json()
            error = {"code": "INVALID_REQUEST", "message": "nothing to shout", "retryable": False}
            self.answer(422, "application/json", json.dumps(error).encode())
        else:
            self.answer(404, "text/plain", b"not found\n")

    def start_stream(self, sse):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if sse else "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def send_line(self, message, sse):
        line = json.dumps(message)
        data = f"data: {line}\n\n" if sse else line + "\n"
        self.wfile.write(data.encode())
        self.wfile.flush()

    def run_job(self, job, sse):
        params = job.get("input") or {}
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            error = {"code": "INVALID_REQUEST", "message": "input.text must be a non-empty string"}
            self.answer(400, "application/json", json.dumps(error).encode())
            return
        interval = float(params.get("interval_ms", 0)) / 1000.0
        words = text.split()
        self.start_stream(sse)
        try:
            if sse:
                self.wfile.write(b": the shouter is warming up\n\n")
            self.send_line({"kind": "status", "body": {"phase": "started", "message": "shouting"}}, sse)
            for number, word in enumerate(words, start=1):
                if interval:
                    time.sleep(interval)
                self.send_line(
                    {"kind": "progress", "body": {"current": number, "total": len(words), "message": word.upper()}},
                    sse,
                )
            result = {"shouted": text.upper(), "traceparent": self.headers.get("traceparent")}
            self.send_line({"result": result}, sse)
        except (BrokenPipeError, ConnectionResetError):
            # The gateway dropped the request: the job was cancelled.
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token")
    args = parser.parse_args()
    Handler.token = args.token
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
