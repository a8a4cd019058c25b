"""How much of jevons' added latency its ledger's background thread causes on the caller's thread.

Why: ``bench_capture.py`` measures jevons beside python-floor (the least a Python wrapper can
do to make a call durable, see there), and jevons stands some microseconds above it. The
caller's own work is one part; session 12 found that a second part appears only while the
ledger's drain thread runs on the other CPU, and vanishes when the whole process runs on one
CPU (``taskset -c 0``). (Session 13, with ``--paired``, found no such part: in the bench's
loop the drain barely runs, starved of the GIL until a lend; see docs/capture.md.) This
script measures that part: jevons alone in each of many fresh
processes (one meter per process, as in ``bench_capture.py``, beside the unwrapped client, a
second unwrapped one, a Python function that only forwards the call, and python-floor), with
the drain changed for the measured calls only (after the warm-up's events are committed):

- ``default``: as shipped;
- ``paused``: the drain builds and commits nothing (rows wait in memory; neither lent the GIL
  nor spilled): what the caller's path alone costs;
- ``no-commit``: the drain builds the events but commits nothing to SQLite;
- ``interval-<ms>``: the drain wakes every <ms> milliseconds instead of 5;
- ``no-build``: the drain builds no event: it commits one prepared row per capture (the
  warm-up's last event's, a duplicate the database ignores) and frees what was handed over;
- ``no-build-keep``: the same, and what was handed over is never freed (so the drain never
  lowers the reference counts of the objects in it, which the caller's next call touches);
- ``swap-only``: the drain takes the rows handed over (under the store's lock, as it does) and
  drops them: no build, no commit, what was handed over freed on the drain's thread;
- ``swap-keep``: the same, and nothing freed;
- ``split-cpus``: as shipped, with the calling thread held on CPU 0 and the drain thread on
  CPU 1 (Linux; the process is otherwise free to run anywhere): the two threads never share a
  CPU's caches and the caller never moves between CPUs.

Printed per variant: the median over its processes of each client's added p50, and of
jevons minus python-floor per process with its quartiles. The variants run alternately, a new
process each, so that drift of the machine is spread over them. Per-process figures spread
over several microseconds: compare medians of 16 or more processes, and read a difference
under about 1.5 us as none.

``--paired BLOCKS`` runs every variant in each process instead, in turn, ``BLOCKS`` times
each (``--calls`` rounds in all per variant, each block after 20 uncounted rounds that settle
the change): the first variant is then compared with each other one within every process,
which takes the spread between processes out of the difference (``split-cpus`` cannot take
turns).

    .venv/bin/python bench/drain_effect.py [--processes 16] [--calls 2000]
        [--variants default,paused,no-commit] [--paired 10] [--cpus 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import (
    chat_call,
    client_call,
    make_client,
    paused_drain,
    percentile,
    python_floor,
    run_once,
)

VARIANTS = ("default", "paused", "no-commit")
#: every variant ``changed_drain`` knows, besides ``interval-<ms>``
NAMED = (*VARIANTS, "no-build", "no-build-keep", "swap-only", "swap-keep", "split-cpus")


def known(variant: str) -> bool:
    if variant.startswith("interval-"):
        try:
            return float(variant.removeprefix("interval-")) > 0
        except ValueError:
            return False
    return variant in NAMED


@contextlib.contextmanager
def changed_drain(store: Any, variant: str, last_event: Any) -> Iterator[None]:
    """A context in which the running drain of ``store`` (a ``JournaledStore``) is changed as
    ``variant`` says; afterwards it is as shipped again (``paused`` then also waits until what
    waited is committed; the swap variants dropped what they took, so nothing is waited for)."""
    with contextlib.ExitStack() as undo:
        undo.callback(store._wake.set)  # (last: the drain starts the next block afresh)

        def replace(name: str, stand_in: Any) -> None:
            """Shadow the store's method ``name`` on the instance, for this context."""
            setattr(store, name, stand_in)
            undo.callback(delattr, store, name)

        if variant == "default":
            pass
        elif variant == "paused":
            undo.callback(store.flush)  # (runs after the pause is lifted)
            undo.enter_context(paused_drain(store))
        elif variant == "no-commit":
            replace("_commit", lambda rows: None)
        elif variant.startswith("interval-"):
            undo.callback(setattr, store, "_interval", store._interval)
            store._interval = float(variant.removeprefix("interval-")) / 1000.0
            store._wake.set()  # (the loop reads the interval after its next drain)
        elif variant in ("no-build", "no-build-keep"):
            from jevons.ledger.codec import index_row

            row = index_row(last_event)
            kept: list[Any] = []

            def materialize(pending: Any) -> Any:
                if variant == "no-build-keep":
                    kept.append(pending)
                return row

            replace("_materialize", materialize)
        elif variant in ("swap-only", "swap-keep"):
            taken_all: list[Any] = []

            def swap_only() -> int:
                with store._lock:
                    taken, store._rows = store._rows, []
                    store._kept_bytes = 0
                if variant == "swap-keep":
                    taken_all.append(taken)
                return len(taken)

            replace("_drain_once", swap_only)
        elif variant == "split-cpus":
            everywhere = os.sched_getaffinity(0)
            undo.callback(lambda: os.sched_setaffinity(store._thread.native_id, everywhere))
            undo.callback(os.sched_setaffinity, 0, everywhere)
            os.sched_setaffinity(0, {0})  # (0: the calling thread)
            drain_once = store._drain_once
            placed = False

            def drain_on_cpu_1() -> int:
                nonlocal placed
                if not placed:
                    os.sched_setaffinity(0, {1})  # the drain thread, on its next cycle
                    placed = True
                return int(drain_once())

            replace("_drain_once", drain_on_cpu_1)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        yield


def measure(variants: list[str], calls: int, warmup: int, seed: int,
            blocks: int = 1) -> dict[str, dict[str, float]]:
    """One process: the added p50 of each client against the unwrapped one, per variant.

    With several variants, the process runs them in turn, ``blocks`` times each, every block
    ``calls // blocks`` rounds after a few rounds that settle the change and are not counted:
    differences between variants are then paired within one process, free of the spread
    between processes (their memory layout, the machine's state when they started)."""
    from jevons.capture.meter import Meter

    forward_to = make_client().chat.completions.create

    def forward(**kwargs: Any) -> Any:
        return forward_to(**kwargs)

    floor = python_floor(make_client(), os.environ["JEVONS_HOME"])
    meter = Meter()
    wrapped = meter.wrap(make_client(), customer="acme", feature="bench")
    clients = {"unwrapped": client_call(make_client()), "unwrapped-2": client_call(make_client()),
               "forward": chat_call(forward), "python-floor": chat_call(floor),
               "jevons": client_call(wrapped)}
    run_once(clients, warmup, seed=-1 - seed)
    last_event = meter.events()[-1]  # (flushes: the warm-up's events are built and committed)
    times: dict[str, dict[str, list[int]]] = {v: {name: [] for name in clients} for v in variants}
    per_block = max(calls // blocks, 1)
    settle = min(20, warmup) if len(variants) > 1 else 0
    for b in range(blocks):
        for v, variant in enumerate(variants if b % 2 == 0 else variants[::-1]):
            with changed_drain(meter.store, variant, last_event):
                run_once(clients, settle, seed=-2 - seed - b * 7 - v)
                for name, mine in run_once(clients, per_block, seed=seed * 1000 + b * 7 + v).items():
                    times[variant][name] += mine
    out: dict[str, dict[str, float]] = {}
    for variant, by_client in times.items():
        base = percentile(sorted(by_client.pop("unwrapped")), 0.5)
        out[variant] = {name: percentile(sorted(mine), 0.5) - base for name, mine in by_client.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=16, help="fresh processes per variant")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--paired", type=int, default=0, metavar="BLOCKS",
                        help="run every variant in each process, in turn, BLOCKS times each")
    parser.add_argument("--cpus", default=None, help="run each process on these CPUs (taskset -c)")
    parser.add_argument("--child", nargs=2, metavar=("VARIANTS", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measured = measure(args.child[0].split(","), args.calls, args.warmup, int(args.child[1]),
                           max(args.paired, 1))
        print(json.dumps(measured), flush=True)
        os._exit(0)  # (a changed drain may never finish the exit's flush)
    variants = args.variants.split(",")
    unknown = [v for v in variants if not known(v)]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(NAMED)}, interval-<ms>")
    if "split-cpus" in variants and args.paired:
        parser.error("split-cpus pins threads; it cannot take turns with others in one process")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for i in range(args.processes):
        ordered = variants if i % 2 == 0 else variants[::-1]
        groups = [ordered] if args.paired else [[v] for v in ordered]
        for group in groups:
            command = [sys.executable, __file__, "--child", ",".join(group), str(i),
                       "--calls", str(args.calls), "--warmup", str(args.warmup),
                       "--paired", str(args.paired)]
            if args.cpus is not None:
                command = ["taskset", "-c", args.cpus, *command]
            with tempfile.TemporaryDirectory() as home:
                done = subprocess.run(command, env={**os.environ, "JEVONS_HOME": home},
                                      capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            for variant, added in measured.items():
                results[variant].append(added)
                print(f"{i:3d} {variant:14s}", " ".join(f"{k}={v:5.1f}" for k, v in added.items()),
                      flush=True)
    print(f"\nadded p50 (us), medians over {args.processes} processes per variant")
    for variant, runs in results.items():
        above = [r["jevons"] - r["python-floor"] for r in runs]
        q1, q2, q3 = statistics.quantiles(above, n=4) if len(above) > 1 else (above[0],) * 3
        medians = " ".join(f"{k}={statistics.median(r[k] for r in runs):5.1f}" for k in runs[0])
        print(f"{variant:14s}", medians,
              f"| jevons - python-floor: median {q2:+.1f} (quartiles {q1:+.1f} .. {q3:+.1f})")
    if args.paired and len(variants) > 1:
        first = variants[0]
        print(f"\npaired within each process, jevons minus python-floor against {first}'s:")
        for variant in variants[1:]:
            gains = [(r["jevons"] - r["python-floor"]) - (f["jevons"] - f["python-floor"])
                     for r, f in zip(results[variant], results[first], strict=True)]
            lower = sum(g < 0 for g in gains)
            print(f"{variant:14s} median {statistics.median(gains):+.1f} us, "
                  f"lower in {lower} of {len(gains)} processes")


if __name__ == "__main__":
    main()
