#!/usr/bin/env python3
"""The official ARCP Python SDK against arcp-gateway's WebSocket endpoint.

    python3 -m venv .venv && .venv/bin/pip install agentruntimecontrolprotocol==1.1.3
    .venv/bin/python examples/python_client.py --url ws://127.0.0.1:8080/arcp --token TOKEN

Uses the unmodified client (`arcp.client.ARCPClient` over `arcp.WebSocketTransport`).
Each scenario prints one JSON object on standard output; the gateway's tests
(tests/it/websocket.rs) run them and check what they print:

  basic      open a session, submit `echo`, read to the result, list jobs, close
  resume     submit `ticker`, drop the connection mid-job, resume with the rotated
             token and the last event_seq seen, read to the terminal; prints every
             job event's event_seq from both connections (no gap, no duplicate)
  cancel     submit a long `ticker`, cancel it after its first event; prints the
             terminal the client resolved
  bad-token  open with a wrong token; prints the error the client raised
  leave      submit `ticker`, print the session id, resume token and job id,
             close without waiting (for following the job over SSE)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from arcp import ARCPError, ClientInfo, SessionResume, WebSocketTransport
from arcp.client import ARCPClient

CLIENT = ClientInfo(name="arcp-gateway-example", version="1.0.0")
WAIT = 20.0


class RecordingTransport(WebSocketTransport):
    """The SDK's own WebSocket transport, keeping every envelope it receives
    (the client drops events of jobs it has no handle for, such as those
    replayed right after a resume)."""

    received: list[dict[str, Any]]

    async def recv(self) -> dict[str, Any]:
        envelope = await super().recv()
        if not hasattr(self, "received"):
            self.received = []
        self.received.append(envelope)
        return envelope


async def settle(handle) -> None:
    """Retrieves a handle's outcome once its connection is gone, so asyncio
    does not warn about a failure nobody looked at."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.done, 1.0)


def job_seqs(transport: RecordingTransport, job_id: str) -> list[int]:
    return [
        e["event_seq"]
        for e in getattr(transport, "received", [])
        if e.get("job_id") == job_id and e.get("event_seq") is not None
    ]


def terminal_of(transport: RecordingTransport, job_id: str) -> dict[str, Any] | None:
    for e in getattr(transport, "received", []):
        if e.get("job_id") == job_id and e.get("type") in ("job.result", "job.error"):
            return e
    return None


async def wait_until(predicate, what: str) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        raise SystemExit(f"timed out waiting for {what}") from None


async def basic(url: str, token: str) -> dict[str, Any]:
    client = ARCPClient(client=CLIENT, token=token)
    welcome = await client.connect(await WebSocketTransport.connect(url))
    handle = await client.submit(agent="echo", input={"hello": "world"})
    result = await asyncio.wait_for(handle.done, WAIT)
    jobs = await client.list_jobs()
    await client.close()
    return {
        "session_id": welcome.session_id,
        "features": list(client.negotiated_features),
        "job_id": handle.job_id,
        "final_status": result.final_status,
        "result": result.result,
        "completed_at": result.completed_at,
        "listed": [job.job_id for job in jobs.jobs],
    }


async def resume(url: str, token: str) -> dict[str, Any]:
    first = await RecordingTransport.connect(url)
    client = ARCPClient(client=CLIENT, token=token)
    welcome = await client.connect(first)
    handle = await client.submit(agent="ticker", input={"count": 40, "interval_ms": 20})
    await wait_until(lambda: len(job_seqs(first, handle.job_id)) >= 5, "five events")
    # Drop the connection mid-job, without session.bye.
    await first.close()
    await settle(handle)
    seen = max(job_seqs(first, handle.job_id))
    await asyncio.sleep(0.3)  # the job keeps running meanwhile

    second = await RecordingTransport.connect(url)
    resumed = ARCPClient(client=CLIENT, token=token)
    rewelcome = await resumed.resume(
        second,
        resume=SessionResume(
            session_id=welcome.session_id,
            resume_token=welcome.resume_token,
            last_event_seq=seen,
        ),
    )
    await wait_until(lambda: terminal_of(second, handle.job_id) is not None, "the terminal")
    terminal = terminal_of(second, handle.job_id)
    await resumed.close()
    return {
        "session_id": welcome.session_id,
        "resumed_session_id": rewelcome.session_id,
        "token_rotated": rewelcome.resume_token != welcome.resume_token,
        "job_id": handle.job_id,
        "last_seen_before_drop": seen,
        "first": job_seqs(first, handle.job_id),
        "second": job_seqs(second, handle.job_id),
        "terminal": terminal,
    }


async def cancel(url: str, token: str) -> dict[str, Any]:
    transport = await RecordingTransport.connect(url)
    client = ARCPClient(client=CLIENT, token=token)
    await client.connect(transport)
    handle = await client.submit(agent="ticker", input={"count": 1000, "interval_ms": 50})
    await wait_until(lambda: len(job_seqs(transport, handle.job_id)) >= 1, "a first event")
    await client.cancel_job(handle.job_id)
    result = await asyncio.wait_for(handle.done, WAIT)
    types = [e["type"] for e in transport.received]
    await client.close()
    return {
        "session_id": client.session_id,
        "job_id": handle.job_id,
        "final_status": result.final_status,
        "completed_at": result.completed_at,
        "types": types,
    }


async def bad_token(url: str, _token: str) -> dict[str, Any]:
    client = ARCPClient(client=CLIENT, token="not-a-valid-token")
    try:
        await client.connect(await WebSocketTransport.connect(url))
    except ARCPError as error:
        return {"refused": True, "code": error.code, "message": error.message}
    return {"refused": False}


async def leave(url: str, token: str) -> dict[str, Any]:
    transport = await RecordingTransport.connect(url)
    client = ARCPClient(client=CLIENT, token=token)
    welcome = await client.connect(transport)
    handle = await client.submit(agent="ticker", input={"count": 30, "interval_ms": 30})
    await wait_until(lambda: len(job_seqs(transport, handle.job_id)) >= 3, "three events")
    seen = max(job_seqs(transport, handle.job_id))
    await client.close()
    await settle(handle)
    return {
        "session_id": welcome.session_id,
        "resume_token": welcome.resume_token,
        "job_id": handle.job_id,
        "last_event_seq": seen,
    }


SCENARIOS = {
    "basic": basic,
    "resume": resume,
    "cancel": cancel,
    "bad-token": bad_token,
    "leave": leave,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/arcp")
    parser.add_argument("--token", required=True, help="api token")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="basic")
    args = parser.parse_args()
    outcome = asyncio.run(SCENARIOS[args.scenario](args.url, args.token))
    json.dump(outcome, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
