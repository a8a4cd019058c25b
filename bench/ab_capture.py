"""Compare the added latency of versions of jevons metered side by side, their calls interleaved.

Why: ``bench_capture.py`` measures each peer in a process of its own, and between processes
running the same code jevons' p50 moves by some 3 us on the 2-core VM here (memory layout
differs from process to process), as much as a change of one Python frame on the hot path is
worth. Versions metered side by side share the machine's moment, so their difference is
steadier: this is the tool to rank a change; ``bench_capture.py`` gives the verdict.

Each git revision named is copied (``git archive``) as a package of its own name,
``jevons_<rev>``, its imports rewritten, and metered beside the working tree's (copied the
same way, ``jevons_work``: see ``copy_revision``), each
with its own ``Meter`` (durable ledger in its own ``JEVONS_HOME``), next to the unwrapped
client, a second unwrapped one (the noise floor) and python-floor (see ``bench_capture``), all
interleaved in a new random order every round. Printed: each client's added p50 per
repetition and the median, each revision's difference to the working tree per repetition,
and the bytecodes each version runs in its own frames for one warm call (``sys.settrace``
opcode events): a deterministic count which, on this path, went with the latency (session 10:
348 bytecodes in six frames against 115 in python-floor's one; 285 in three took 5-7 us off).

Layout luck (session 11): one process is not enough. An A/A/A/A run, the same code four times
(the working tree and three revisions naming the same commit), found the working tree's copy
2.1-3.2 us faster than each of the other three, in 5 of 5 repetitions, while those three
agreed within 0.2 us: a copy's luck holds for the life of its process, so a difference of a
few us that keeps its sign in every repetition of one process is no finding (session 10's
single-process rankings, and its "second copy 0.6 us faster" bias, were within that luck).
``--processes N`` runs the comparison in N fresh processes, each copy's place in memory drawn
anew, and prints the median over the processes of each version's difference to the working
tree, with the count of processes where it was below: the tool's verdict. Many short
processes rank best for the time (``--processes 24 --repeats 1 --calls 2000``, 5 minutes for
two versions): the spread is between processes, not within one. Measured that way, per-process
differences between two versions spread over about +-4 us; a median under 1 us, or a count
short of about 17 of 24, is no finding.

    .venv/bin/python bench/ab_capture.py REV [REV ...] [--calls 3000] [--repeats 5]
        [--processes N] [--installed]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import MESSAGES, client_call, make_client, percentile, python_floor, run_once

REPO = Path(__file__).resolve().parent.parent


def copy_revision(rev: str | None, into: Path) -> str:
    """``src/jevons`` at ``rev`` (``None``: the working tree's) as the package ``jevons_<rev>``
    in ``into``; its name. The working tree is copied too: the installed ``jevons``, imported
    by its own name, measured slower than the same code copied (by 3-4 us in session 10's
    single-process runs, within the layout luck of the module docstring), and copies are alike."""
    name = "jevons_" + (re.sub(r"\W", "_", rev) if rev is not None else "work")
    if rev is None:
        shutil.copytree(REPO / "src" / "jevons", into / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/jevons"], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into / "_archive", filter="data")
        (into / "_archive" / "src" / "jevons").rename(into / name)
    rules = [(re.compile(r"\bfrom jevons\."), f"from {name}."),
             (re.compile(r"\bimport jevons\."), f"import {name}."),
             (re.compile(r"^(\s*)from jevons import", re.M), rf"\1from {name} import"),
             (re.compile(r"^(\s*)import jevons$", re.M), rf"\1import {name} as jevons"),
             (re.compile(r"\"jevons\.([a-z_.]+)\""), rf'"{name}.\1"')]
    for path in (into / name).rglob("*.py"):
        text = path.read_text()
        for pattern, replacement in rules:
            text = pattern.sub(replacement, text)
        path.write_text(text)
    return name


def bytecodes(fn: Callable[[], Any], package: str) -> tuple[int, dict[str, int]]:
    """Bytecodes run in ``package``'s own frames during one call of ``fn``, by function."""
    counts: collections.Counter[str] = collections.Counter()
    marker = os.sep + package + os.sep

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if marker not in frame.f_code.co_filename:
            return None
        frame.f_trace_opcodes = True

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[frame.f_code.co_qualname] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return sum(counts.values()), dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", help="git revisions to compare with the working tree")
    parser.add_argument("--installed", action="store_true",
                        help="also meter the installed jevons, imported under its own name")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1,
                        help="run the comparison in this many fresh processes and aggregate")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes > 1:
        return across_processes(args)

    work = Path(tempfile.mkdtemp(prefix="jevons-ab-"))
    sys.path.insert(0, str(work))
    packages = [copy_revision(None, work), *(copy_revision(rev, work) for rev in args.revs),
                *(["jevons"] if args.installed else [])]

    calls: dict[str, Callable[[], Any]] = {"unwrapped": client_call(make_client()),
                                           "unwrapped-2": client_call(make_client())}
    floor = python_floor(make_client(), str(work))
    calls["python-floor"] = lambda: floor(model="gpt-4o-mini", messages=MESSAGES)
    meters: dict[str, Any] = {}
    for package in random.sample(packages, len(packages)):  # no version always made first
        os.environ["JEVONS_HOME"] = tempfile.mkdtemp(dir=work)
        meter = importlib.import_module(package + ".capture.meter").Meter()
        if not type(meter.store).__module__.startswith(package + "."):
            raise SystemExit(f"{package} did not load its own store: {type(meter.store)}")
        meters[package] = meter
        calls[package] = client_call(meter.wrap(make_client(), customer="acme", feature="bench"))

    run_once(calls, args.warmup, seed=-1)
    for package in packages:
        total, by_function = bytecodes(calls[package], package)
        print(f"{package}: {total} bytecodes in its frames per call {by_function}")
    added: dict[str, list[float]] = {name: [] for name in calls if name != "unwrapped"}
    print(f"{args.repeats} x {args.calls} interleaved calls per client, added p50 (us) per repetition")
    for rep in range(args.repeats):
        run_once(calls, args.warmup, seed=-2 - rep)
        for meter in meters.values():
            meter.flush()
        times = run_once(calls, args.calls, seed=rep)
        base = percentile(sorted(times.pop("unwrapped")), 0.50)
        for name, mine in times.items():
            added[name].append(percentile(sorted(mine), 0.50) - base)
        print(f"  {rep}: unwrapped {base:.1f} us; " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in added.items()),
              flush=True)
    print("median added p50: " + ", ".join(f"{n} {statistics.median(v):.1f} us" for n, v in added.items()))
    for package in packages[1:]:
        diffs = [b - a for a, b in zip(added[packages[0]], added[package], strict=True)]
        each = ", ".join(f"{d:+.1f}" for d in diffs)
        print(f"{package} - {packages[0]} (working tree), per repetition: {each} us"
              f" (median {statistics.median(diffs):+.1f})")
    for package, meter in meters.items():
        stats = meter.stats()
        print(f"{package}: {stats['events']} events, {stats['errors']} errors")
        meter.close()
    if args.json:  # for ``across_processes``: the last line
        print(json.dumps({name: statistics.median(v) for name, v in added.items()}))
    return 0


def across_processes(args: argparse.Namespace) -> int:
    """The comparison in ``args.processes`` fresh processes, one after the other: each
    process's median added p50 per version, then, per version, the median over the processes
    of its difference to the working tree's copy and the count of processes where it was
    below it."""
    cmd = [sys.executable, __file__, *args.revs, "--calls", str(args.calls), "--warmup",
           str(args.warmup), "--repeats", str(args.repeats), "--json",
           *(["--installed"] if args.installed else [])]
    runs: list[dict[str, float]] = []
    for number in range(args.processes):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"process {number} failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"process {number}: " + ", ".join(f"{n} {v:.1f}" for n, v in runs[-1].items()), flush=True)
    names = [n for n in runs[0] if n.startswith("jevons")]
    work = "jevons_work" if "jevons_work" in names else names[0]
    print(f"median over {args.processes} processes of the median added p50: "
          + ", ".join(f"{n} {statistics.median(r[n] for r in runs):.1f} us" for n in runs[0]))
    for name in names:
        if name == work:
            continue
        diffs = [r[name] - r[work] for r in runs]
        below = sum(d < 0 for d in diffs)
        print(f"{name} - {work}: median {statistics.median(diffs):+.1f} us over the processes "
              f"({', '.join(f'{d:+.1f}' for d in diffs)}); below in {below} of {len(diffs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
