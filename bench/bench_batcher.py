"""The dynamic batcher's timing, measured side by side in one run (what tests/test_batcher.py leaves to us).

With a model that returns at once, so only the batcher is timed, over --rounds interleaved rounds:

* lone request, max_delay_ms=0: one request to an idle batcher; its latency should be a few event-loop
  turns and a thread hop, far below any delay one would configure;
* flush on size, max_delay_ms=D: a batch of 4 filled before the delay ends; time from the request that
  fills it to its answer, as a fraction of D (near 0: flushed on size, not on the timer);
* partial flush, max_delay_ms=D: 3 requests into a batch of 64; time to their answers / D (near 1:
  flushed when due, not before, not much after).

Prints medians in ms and the ratios. Usage: python -m bench.bench_batcher [--rounds N] [--delay-ms D]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import numpy as np

from service.batcher import DynamicBatcher


def _identity(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = x[:, 0, 0, 0].copy()
    return first, first


def _images(n: int) -> np.ndarray:
    return np.zeros((n, 1, 28, 28), np.float32)


async def lone(requests: int) -> float:
    batcher = DynamicBatcher(_identity, max_batch_size=8)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        await batcher.submit(_images(1))
        times.append(time.perf_counter() - started)
    await batcher.close()
    return statistics.median(times)


async def flush_on_size(delay_ms: float) -> float:
    batcher = DynamicBatcher(_identity, max_batch_size=4, max_delay_ms=delay_ms)
    waiting = [asyncio.create_task(batcher.submit(_images(1))) for _ in range(3)]
    await asyncio.sleep(0.005)
    started = time.perf_counter()
    await asyncio.gather(batcher.submit(_images(1)), *waiting)
    elapsed = time.perf_counter() - started
    await batcher.close()
    return elapsed


async def partial_flush(delay_ms: float) -> float:
    batcher = DynamicBatcher(_identity, max_batch_size=64, max_delay_ms=delay_ms)
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(_images(1)) for _ in range(3)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--delay-ms", type=float, default=60.0, help="max_delay_ms D (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.delay_ms <= 0:
        parser.error("--rounds must be at least 1 and --delay-ms positive")
    results: dict[str, list[float]] = {"lone": [], "size": [], "partial": []}
    for _ in range(args.rounds):
        results["lone"].append(asyncio.run(lone(20)))
        results["size"].append(asyncio.run(flush_on_size(args.delay_ms)))
        results["partial"].append(asyncio.run(partial_flush(args.delay_ms)))
    delay_s = args.delay_ms / 1000
    lone_s, size_s, partial_s = (statistics.median(results[k]) for k in ("lone", "size", "partial"))
    print(f"medians of {args.rounds} rounds, max_delay_ms D = {args.delay_ms:g}\n")
    print("| case | median ms | / D |")
    print("| --- | ---: | ---: |")
    print(f"| lone request, delay 0 | {lone_s * 1000:.2f} | {lone_s / delay_s:.3f} |")
    print(f"| flush on size (batch of 4 filled) | {size_s * 1000:.2f} | {size_s / delay_s:.3f} |")
    print(f"| partial batch flushed when due | {partial_s * 1000:.2f} | {partial_s / delay_s:.3f} |")
    ok = size_s < 0.5 * delay_s and 0.9 * delay_s <= partial_s
    print(f"\nflushed on size well before D, and a partial batch not before D: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
