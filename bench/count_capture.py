"""Count, with callgrind, what one metered call costs the CPU's caches, client by client.

Why: timings of a few microseconds move by as much between processes of the same code
(``ab_capture.py``'s docstring), while callgrind's counts of a call's instructions and cache
misses are nearly steady. Session 14 found with this that jevons' client ran ~180 more generic
method lookups a call inside the SDK than any other client (its copy's attributes outgrew the
class's shared table: see docs/capture.md), which no timing could have pointed at.

Each client is counted in a process of its own that holds the bench's clients (the unwrapped
one, python-floor, jevons and a second unwrapped one, interleaved as ``bench_capture.py``
does); the counted one is called through ``operator.call``, so that
``--toggle-collect=_operator_call`` counts exactly its calls. Garbage collection is off and
jevons' drain stopped for the counted rounds (their work lands on other calls), OpenBLAS
runs no threads. Printed per call: instructions, L1 instruction and data read misses,
last-level misses (a 512 KB level standing in for an L2), and the calls the bytecode loop
made to ``_PyObject_GetMethod`` (a method lookup the interpreter could not specialize).
Needs valgrind (Debian's ``valgrind``); about 8 minutes for the three clients on 2 cores.
Count 200 rounds or more: the first tens of counted calls carry a transient of their own (at
20 rounds the unwrapped client showed 10,200 generic lookups a call, at 200 rounds 1,400).

    .venv/bin/python bench/count_capture.py [--rounds 200] [--clients unwrapped,floor,jevons]
"""

from __future__ import annotations

import argparse
import gc
import operator
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVENTS = ("Ir", "I1mr", "D1mr", "ILmr", "DLmr")


def child(counted: str, rounds: int) -> None:
    """The process valgrind runs: warm up, stop what runs between calls, count ``rounds``."""
    sys.path.insert(0, str(HERE))
    home = tempfile.mkdtemp()
    os.environ["JEVONS_HOME"] = home
    import bench_capture as B

    from jevons.capture.meter import Meter

    meter = Meter()
    calls = {"unwrapped": B.client_call(B.make_client()),
             "floor": B.chat_call(B.python_floor(B.make_client(), home)),
             "jevons": B.client_call(meter.wrap(B.make_client(), customer="acme", feature="bench")),
             "unwrapped-2": B.client_call(B.make_client())}
    order = [calls["unwrapped"], calls["floor"], calls["unwrapped"], calls["jevons"], calls["unwrapped"],
             calls["unwrapped-2"]]
    for _ in range(300):
        for call in order:
            call()
    meter.flush()
    B.paused_drain(meter.store).__enter__()  # (never left: the process ends with the count)
    meter.store._interval = 3600.0  # the drain's next wait is an hour
    time.sleep(1.0)
    gc.collect()
    gc.disable()
    target = calls["unwrapped-2" if counted == "unwrapped" else counted]
    through = operator.call
    plan = [(through, call) if call is target else (None, call) for call in order]
    for _ in range(rounds):
        for wrapper, call in plan:
            if wrapper is None:
                call()
            else:
                wrapper(call)
    os._exit(0)


def read_counts(path: Path) -> tuple[dict[str, int], int]:
    """Totals of ``EVENTS`` and the calls of ``_PyObject_GetMethod`` from the bytecode loop."""
    names: dict[str, str] = {}
    totals: Counter[str] = Counter()
    events: list[str] = []
    fn = cfn = ""
    pending = False
    get_method_calls = 0
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m is None:
                continue
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn = names[m.group(1)]
            else:
                cfn = names[m.group(1)]
        elif line.startswith("calls="):
            pending = True
            if cfn == "_PyObject_GetMethod" and fn.startswith("_PyEval_EvalFrameDefault"):
                get_method_calls += int(line.split("=")[1].split()[0])
        elif line[:1].isdigit() or line[:1] in "+-*":
            if pending:  # the inclusive cost of the call above: counted where it is spent
                pending = False
                continue
            for name, value in zip(events, line.split()[1:], strict=False):
                totals[name] += int(value)
    return dict(totals), get_method_calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", default="unwrapped,floor,jevons")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds)
        return 0
    out = Path(tempfile.mkdtemp())
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    procs: dict[str, Any] = {}
    for client in args.clients.split(","):
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64",
               "--LL=524288,8,64", "--collect-atstart=no", "--toggle-collect=_operator_call",
               f"--callgrind-out-file={out / client}.out", sys.executable, __file__, "--child", client,
               "--rounds", str(args.rounds)]
        procs[client] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {}
    for client, proc in procs.items():
        proc.wait()
        totals, get_method = read_counts(out / f"{client}.out")
        per_call = [totals.get(e, 0) / args.rounds for e in EVENTS]
        rows[client] = [*per_call, get_method / args.rounds]
    columns = ", ".join(EVENTS)
    print(f"per call, {args.rounds} calls of each client counted (callgrind; the columns: {columns}, "
          "generic method lookups)")
    base = rows.get("unwrapped")
    for client, row in rows.items():
        cells = "  ".join(f"{v:12,.0f}" if base is None or client == "unwrapped" else f"{v - b:+12,.0f}"
                          for v, b in zip(row[:-1], base or row, strict=False))
        print(f"{client:12s} {cells}  {row[-1]:8,.0f}")
    if base is not None:
        print("(other rows: the difference to the unwrapped client)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
