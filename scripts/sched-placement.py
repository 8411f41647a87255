#!/usr/bin/env python3
"""Where the processes of a benchmark ran, and how their wake-ups went,
from a `perf sched record -a` capture (docs/performance.md, fourteenth
pass). Run the bench, record the whole machine while it runs, then:

    perf sched record -a -o sched.data -- sleep 30
    python3 scripts/sched-placement.py sched.data [FROM TO] [--name PID=LABEL ...]

FROM and TO are perf timestamps in seconds (a steady phase of one column;
default the whole capture). It prints, per process (threads summed):

- its CPU time on each CPU, in ms per second of the window;
- its threads' wake-ups: who woke them (a process, or `irq` for a timer
  or interrupt), whether they then ran on the waker's CPU or another, whether
  some other CPU was idle when they were woken, and the delay from the
  wake-up to running (p50 / p90, µs).

CPU time is summed from `sched_stat_runtime`, and a thread's start after
a wake-up is its first runtime report minus the runtime it reports, not
the `sched_switch` into it: on the VM this was written on, a CPU leaving
idle records no switch. A wake-up from an interrupt counts as the
interrupted thread's (`irq` when the CPU was idle).

Processes are named `PID (comm)`; `--name 5110=floor` gives one a label.
Standard library only; needs `perf` on the PATH.
"""
import collections
import re
import subprocess
import sys

RUNTIME = re.compile(r"runtime=(\d+)")
LINE = re.compile(r"\s*(.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s*(.*)")
SWITCH = re.compile(r"prev_pid=(\d+) .*==> next_comm=(.*) next_pid=(\d+)")
WAKING = re.compile(r"comm=(.*) pid=(\d+) prio")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    args = sys.argv[1:]
    names = {}
    while "--name" in args:
        at = args.index("--name")
        pid, label = args[at + 1].split("=", 1)
        names[int(pid)] = label
        del args[at : at + 2]
    if not args:
        sys.exit(__doc__)
    start, end = (float(args[1]), float(args[2])) if len(args) >= 3 else (0.0, float("inf"))
    script = subprocess.run(
        ["perf", "script", "-i", args[0], "-F", "comm,pid,tid,cpu,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout

    process_of = {0: 0}  # tid -> pid; 0 is the idle task
    comm_of = {}
    running = collections.defaultdict(int)  # cpu -> tid
    busy = collections.defaultdict(float)  # (pid, cpu) -> seconds
    woken = {}  # tid -> (time, waker cpu, waker pid, another cpu idle)
    wakes = collections.defaultdict(list)  # (pid, waker, placement, idle) -> delays
    cpus = set()
    first = last = None
    for line in script.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        comm, pid, tid, cpu, time, event, trace = match.groups()
        pid, tid, cpu, time = int(pid), int(tid), int(cpu), float(time)
        if tid:
            process_of[tid] = pid
            comm_of.setdefault(pid, comm)
        cpus.add(cpu)
        inside = start <= time <= end
        if event == "sched_switch":
            switch = SWITCH.search(trace)
            if switch:
                running[cpu] = int(switch.group(3))
        elif event == "sched_stat_runtime" and tid:
            ran = int(RUNTIME.search(trace).group(1)) / 1e9
            began = time - ran
            overlap = min(time, end) - max(began, start)
            if overlap > 0:
                busy[(pid, cpu)] += overlap
            running[cpu] = tid
            if tid in woken:
                at, waker_cpu, waker, idle = woken.pop(tid)
                placement = "on the waker's CPU" if cpu == waker_cpu else "on another CPU"
                idle = "another CPU was idle" if idle else "no other CPU idle"
                wakes[(pid, waker, placement, idle)].append(max(0.0, began - at))
        elif event == "sched_waking" and inside:
            waking = WAKING.search(trace)
            if not waking:
                continue
            wakee = int(waking.group(2))
            if wakee not in process_of:
                continue
            others_idle = any(running[other] == 0 for other in cpus if other != cpu)
            waker = process_of.get(tid, -1) if tid else "irq"
            woken[wakee] = (time, cpu, waker, others_idle)
        if inside:
            first = time if first is None else first
            last = time

    def name(pid):
        if pid == "irq":
            return "irq"
        if pid == 0:
            return "idle"
        return names.get(pid) or f"{pid} ({comm_of.get(pid, '?')})"

    window = (last or 0) - (first or 0)
    if window <= 0:
        sys.exit("no events in that window")
    print(f"window: {first:.3f} to {last:.3f} ({window:.2f} s), CPUs {sorted(cpus)}")
    print("\nCPU time, ms per second of the window:")
    pids = sorted({pid for pid, _ in busy}, key=lambda p: -sum(busy[(p, c)] for c in cpus))
    for pid in pids:
        if sum(busy[(pid, c)] for c in cpus) < 0.0005 * window:
            continue
        shares = ", ".join(f"CPU {c} {1000 * busy[(pid, c)] / window:.1f}" for c in sorted(cpus))
        print(f"  {name(pid)}: {shares}")
    print("\nwake-ups: count, delay to running p50 / p90 (µs)")
    for key, delays in sorted(wakes.items(), key=lambda kv: (str(kv[0][0]), -len(kv[1]))):
        wakee, waker, placement, idle = key
        if len(delays) < 5 or wakee in (0, -1):
            continue
        print(
            f"  {name(wakee)} woken by {name(waker)}, ran {placement}, {idle}: {len(delays)}, "
            f"{1e6 * percentile(delays, 0.5):.0f} / {1e6 * percentile(delays, 0.9):.0f}"
        )


if __name__ == "__main__":
    main()
