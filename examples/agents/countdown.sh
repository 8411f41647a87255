#!/bin/sh
# countdown: an ARCP agent in POSIX shell, run by arcp-gateway once per job.
#
# Protocol (docs/agents.md): the job arrives as one JSON
# line on standard input; every line written to standard output is one JSON
# message: {"kind":...,"body":...} events, then {"result":...} or
# {"error":{...}}. Standard error becomes `log` events.
#
# Input: {"count": N (default 5, at most 100000), "interval": SECONDS (default 0.2)}
# Emits a `status` event with its pid, then one `progress` event per tick
# (1 to N, one every `interval` seconds),
# then the result {"counted": N, "traceparent": "<the W3C trace context it got>"}.
set -eu

IFS= read -r job || true

# Good enough for this agent's flat numeric input; real agents parse JSON.
field() {
    printf '%s' "$job" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9.][0-9.]*\).*/\1/p" | head -n 1
}
count=$(field count)
interval=$(field interval)
count=${count:-5}
interval=${interval:-0.2}

case $count in
    *[!0-9]*)
        echo '{"error":{"code":"INVALID_REQUEST","message":"input.count must be a whole number"}}'
        exit 0
        ;;
esac
if [ "$count" -gt 100000 ]; then
    echo '{"error":{"code":"INVALID_REQUEST","message":"input.count must be at most 100000"}}'
    exit 0
fi

printf '{"kind":"status","body":{"phase":"started","message":"%s ticks to go","pid":%s}}\n' "$count" "$$"
echo "countdown: starting at $count (pid $$)" >&2

i=1
while [ "$i" -le "$count" ]; do
    sleep "$interval"
    printf '{"kind":"progress","body":{"current":%s,"total":%s,"units":"ticks"}}\n' "$i" "$count"
    i=$((i + 1))
done

echo "countdown: done" >&2
printf '{"result":{"counted":%s,"traceparent":"%s"}}\n' "$count" "${TRACEPARENT:-}"
