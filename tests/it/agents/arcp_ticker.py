#!/usr/bin/env python3
"""An official ARCP runtime (Python SDK) serving a `ticker` agent, for
tests/it/websocket.rs: `ticker {count, interval_ms}` emits `count` progress
events, then `{ticks: count}`. When a ticker job is cancelled, its job id is
appended to the file named by --cancelled, so a test can see that a cancel
reached the runtime.

    arcp_ticker.py --port PORT --token TOKEN --cancelled FILE
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from arcp._runtime.server import ARCPRuntime, RuntimeInfo
from arcp._transport.websocket import serve_websocket
from arcp.runtime import StaticBearerVerifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--cancelled", required=True)
    args = parser.parse_args()

    async def ticker(input_value: Any, ctx: Any) -> Any:
        count = int(input_value.get("count", 5))
        interval = int(input_value.get("interval_ms", 100)) / 1000
        try:
            for n in range(1, count + 1):
                await asyncio.sleep(interval)
                await ctx.progress(n, total=count, units="ticks")
        except asyncio.CancelledError:
            with open(args.cancelled, "a") as f:
                f.write("cancelled\n")
            raise
        return {"ticks": count}

    runtime = ARCPRuntime(
        runtime=RuntimeInfo(name="arcp-ticker", version="1.0.0"),
        bearer=StaticBearerVerifier({args.token: "gateway"}),
    )
    runtime.register_agent("ticker", ticker)

    async def go() -> None:
        server = await serve_websocket(runtime.accept, host="127.0.0.1", port=args.port, path="/arcp")
        async with server:
            await server.serve_forever()

    asyncio.run(go())


if __name__ == "__main__":
    main()
