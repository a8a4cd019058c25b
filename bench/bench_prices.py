"""Price-book benchmark: jevons vs pydantic's genai-prices, measured in the same run.

    .venv/bin/python bench/bench_prices.py [--rounds 7] [--calls 3000]

Prints, as ratios against genai-prices (the peer) in this run:

1. per-call cost of the same usages on real models (``jevons.cost`` vs ``genai_prices.calc_price``):
   an OpenAI call, an Anthropic call with cache reads and writes, a Gemini call over 200K input
   tokens (long-context tier). Goal: jevons >= 10x faster.
2. ``import jevons`` + bundled book load, in a fresh subprocess (goal <= 150 ms); also the full
   ``jevons.default_book()`` (which adds reading the settings) for information.
3. resident memory of the book (goal <= 30 MB): RSS growth of a fresh process from before
   ``import jevons`` to after the book is loaded, and the Python heap the book holds.

Timings are the best of several rounds (interleaved, so machine noise hits both sides alike).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import timeit
from decimal import Decimal

CASES = [
    # label, model, provider (jevons hint / genai-prices provider_id), usage
    ("OpenAI gpt-4o", "gpt-4o", "openai", {"input_tokens": 1_000, "output_tokens": 500}),
    (
        "Anthropic sonnet-4.5 + cache",
        "claude-sonnet-4-5-20250929",
        "anthropic",
        {"input_tokens": 10_000, "cache_read_tokens": 6_000, "cache_write_tokens": 1_000,
         "output_tokens": 500},
    ),
    ("Gemini 2.5 Pro > 200K", "gemini-2.5-pro", "google", {"input_tokens": 250_000, "output_tokens": 2_000}),
]

_SUBPROCESS_LOAD = r"""
import time
t0 = time.perf_counter()
import jevons
from jevons.prices.loader import load_bundled_book
book = load_bundled_book()
t1 = time.perf_counter()
jevons.default_book()
t2 = time.perf_counter()
print(f"{t1 - t0} {t2 - t0}")
"""

_SUBPROCESS_PEER_LOAD = r"""
import time
t0 = time.perf_counter()
import genai_prices
from genai_prices import calc_price, Usage
calc_price(Usage(input_tokens=1, output_tokens=1), "gpt-4o", provider_id="openai")
print(time.perf_counter() - t0)
"""

_SUBPROCESS_MEMORY = r"""
import gc, os, sys, tracemalloc
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
which = sys.argv[1]
before = rss()
if which == "jevons":
    import jevons
    from jevons.prices.loader import load_bundled_book
    after_import = rss()
    tracemalloc.start()
    book = load_bundled_book()
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
else:
    tracemalloc.start()
    import genai_prices
    from genai_prices import calc_price, Usage
    calc_price(Usage(input_tokens=1, output_tokens=1), "gpt-4o", provider_id="openai")
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
gc.collect()
print(rss() - before, heap)
"""


def _per_call(rounds: int, calls: int) -> list[tuple[str, float, float, Decimal, Decimal]]:
    import genai_prices

    import jevons

    book = jevons.default_book()
    rows = []
    for label, model, provider, raw in CASES:
        ours = jevons.Usage(
            input_tokens=raw["input_tokens"],
            output_tokens=raw["output_tokens"],
            cache_read_tokens=raw.get("cache_read_tokens", 0),
            cache_write_5m_tokens=raw.get("cache_write_tokens", 0),
        )
        theirs = genai_prices.Usage(**raw)
        mine_total = jevons.cost(model, ours, provider=provider).total_usd
        peer_total = genai_prices.calc_price(theirs, model, provider_id=provider).total_price
        assert mine_total is not None and mine_total == peer_total, (label, mine_total, peer_total)
        mine_times: list[float] = []
        peer_times: list[float] = []
        peer_calls = max(calls // 10, 100)
        for _ in range(rounds):  # interleaved rounds

            def ours_call(m: str = model, u: jevons.Usage = ours, p: str = provider) -> object:
                return book.cost(m, u, provider=p)

            def peer_call(m: str = model, u: object = theirs, p: str = provider) -> object:
                return genai_prices.calc_price(u, m, provider_id=p)  # type: ignore[arg-type]

            mine_times.append(timeit.timeit(ours_call, number=calls) / calls)
            peer_times.append(timeit.timeit(peer_call, number=peer_calls) / peer_calls)
        rows.append((label, min(mine_times), min(peer_times), mine_total, Decimal(str(peer_total))))
    return rows


def _run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    print(f"1. per-call cost (best of {args.rounds} rounds)")
    print(f"   {'case':<30} {'jevons':>10} {'genai-prices':>13} {'speed-up':>9}  total USD")
    ratios = []
    for label, mine, peer, total, _ in _per_call(args.rounds, args.calls):
        ratio = peer / mine
        ratios.append(ratio)
        print(f"   {label:<30} {mine * 1e6:8.2f}us {peer * 1e6:11.2f}us {ratio:8.1f}x  {total}")
    print(f"   geometric-mean speed-up {statistics.geometric_mean(ratios):.1f}x (goal >= 10x)")

    loads = [tuple(float(x) for x in _run(_SUBPROCESS_LOAD).split()) for _ in range(5)]
    peer_loads = [float(_run(_SUBPROCESS_PEER_LOAD)) for _ in range(5)]
    book_load = statistics.median(x[0] for x in loads)
    default_load = statistics.median(x[1] for x in loads)
    peer_load = statistics.median(peer_loads)
    print("2. fresh process, median of 5")
    print(f"   import jevons + bundled book load  {book_load * 1e3:7.1f} ms (goal <= 150 ms)")
    print(f"   ... + settings, jevons.default_book() {default_load * 1e3:7.1f} ms")
    print(f"   import genai_prices + first price   {peer_load * 1e3:7.1f} ms"
          f"  -> jevons {peer_load / book_load:.1f}x faster")

    rss, heap = (int(x) for x in _run(_SUBPROCESS_MEMORY, "jevons").split())
    peer_rss, peer_heap = (int(x) for x in _run(_SUBPROCESS_MEMORY, "genai").split())
    print("3. memory of a fresh process")
    print(f"   jevons: RSS growth {rss / 2**20:6.1f} MB (import + book; goal <= 30 MB),"
          f" book heap {heap / 2**20:5.1f} MB")
    print(f"   genai-prices: RSS growth {peer_rss / 2**20:6.1f} MB, heap {peer_heap / 2**20:5.1f} MB"
          f"  -> jevons uses {peer_rss / rss:.1f}x less")
    print(json.dumps({
        "per_call_speedup": [round(r, 1) for r in ratios],
        "import_and_book_ms": round(book_load * 1e3, 1),
        "default_book_ms": round(default_load * 1e3, 1),
        "rss_mb": round(rss / 2**20, 1),
        "book_heap_mb": round(heap / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
