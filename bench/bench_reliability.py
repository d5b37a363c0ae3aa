"""Reliability under load, on a live `digits serve` on 127.0.0.1: the heavier versions of the tests in
tests/test_overload.py and tests/test_reload.py. Every run is bounded by --duration.

1. overload, model-bound: KServe v2 requests of --images images each (binary UINT8 tensors, cheap to
   parse, so the model is the bottleneck). Capacity is measured with as many closed-loop clients as
   the queue holds, then --overload times that rate is offered open-loop (requests start on
   schedule whatever the answers) for --duration seconds, then capacity is measured again.
2. overload, small requests: one MNIST digit per POST /predict (JSON pixels, what the drawing page's
   API users send); 8 clients for capacity, then 256 clients without think time; with the default
   queue (512 images) and with a short one (32 images, as in tests/test_overload.py).
3. reload under steady load: 16 clients send /predict while lenet5 is swapped between two real
   models every --duration/8 s, with one corrupt file refused halfway.
4. SIGTERM under load: 16 clients, each request on a fresh connection, signal after 2 s.

For each it prints requests tried, answered right (the same answer the idle server gave), shed (503),
failed (a wrong answer, any other status, or no answer),
latency percentiles, the server's resident memory (VmRSS) before and after and its peak (VmHWM),
and throughput after / before. ONNX Runtime runs with 1 thread (DIGITS_INTRA_OP_THREADS=1).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson

from testkit.data import load_sample
from testkit.live_server import (
    Answer,
    Connection,
    LiveServer,
    LoadResult,
    Request,
    closed_loop,
    exchange_once,
    install_model,
    open_loop,
    rss_mib,
)

REPO = Path(__file__).resolve().parents[1]

KEY = "bench-key"


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def report(name: str, result: LoadResult) -> None:
    shed = result.statuses[503]
    print(f"  {name}: tried {result.tried} in {result.seconds:.1f} s, right {result.statuses[200] - result.wrong}, "
          f"shed (503) {shed}, failed {result.failed} {dict(result.errors) or ''}")
    print(f"    served {result.rate():.0f}/s, p50/p99 {ms(result.p(50))}/{ms(result.p(99))} ms"
          + (f"; shed p50/p99 {ms(result.p(50, 503))}/{ms(result.p(99, 503))} ms, Retry-After "
             f"{dict(result.retry_after)}" if shed else ""), flush=True)


def memory(server: LiveServer, label: str) -> float:
    rss = server.rss_mib()
    print(f"  memory {label}: RSS {rss:.0f} MiB, peak {rss_mib(server.pid, 'VmHWM'):.0f} MiB", flush=True)
    return rss


def checker(port: int, requests: list[Request], key: Callable[[Answer], object]) -> Callable[[Request, Answer], bool]:
    """A check that an answer is the one the server gave to the same request when idle (so a mixed-up,
    corrupted or partial answer under load shows; the model's own mistakes do not count)."""

    async def first_answers() -> dict[bytes, object]:
        connection = Connection(port)
        try:
            return {r.body: key(await connection.send(r.encode(f"127.0.0.1:{port}"))) for r in requests}
        finally:
            connection.close()

    expected = asyncio.run(first_answers())
    return lambda request, answer: key(answer) == expected[request.body]


def digits_of(answer: Answer) -> object:
    """The digits a /predict answer or a v2 infer answer (probabilities) gives."""
    doc = orjson.loads(answer.body)
    if "predictions" in doc:
        return tuple(p["digit"] for p in doc["predictions"])
    return tuple(np.asarray(doc["outputs"][0]["data"]).reshape(-1, 10).argmax(1).tolist())


def v2_request(images: np.ndarray) -> Request:
    """A v2 infer request with the images as a binary UINT8 tensor, asking for probabilities only."""
    x = np.ascontiguousarray(images, dtype=np.uint8)
    head = orjson.dumps({"inputs": [{"name": "pixels", "shape": [len(x), 1, 28, 28], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": x.size}}],
                         "outputs": [{"name": "probabilities"}]})
    return Request("/v2/models/lenet5/infer", head + x.tobytes(), "application/octet-stream",
                   headers=(("Inference-Header-Content-Length", str(len(head))),))


def overload_model_bound(args: argparse.Namespace, images: np.ndarray) -> None:
    k = args.images
    request = v2_request(images[:k])
    clients = max(1, args.max_queue // k)  # as many as the queue holds: capacity without shedding
    print(f"\n1. overload, model-bound: {k} images per v2 request, {args.overload:g}x capacity for "
          f"{args.duration:g} s (open loop), queue {args.max_queue} images")
    with LiveServer(args.models_dir, env={"DIGITS_MAX_QUEUE": str(args.max_queue)}) as server:
        right = checker(server.port, [request], digits_of)
        asyncio.run(closed_loop(server.port, lambda n: request, clients=clients, duration_s=1, check=right))
        before_rss = memory(server, "before")
        capacity = asyncio.run(closed_loop(server.port, lambda n: request, clients=clients, duration_s=3,
                                           check=right))
        report(f"capacity ({clients} clients)", capacity)
        rate = args.overload * capacity.rate()
        print(f"  offering {rate:.0f} requests/s ({rate * k:.0f} images/s)", flush=True)
        over = asyncio.run(open_loop(server.port, lambda n: request, rate=rate, duration_s=args.duration,
                                     max_in_flight=args.max_in_flight, check=right))
        report("overload", over)
        after = asyncio.run(closed_loop(server.port, lambda n: request, clients=clients, duration_s=3,
                                        check=right))
        report(f"after ({clients} clients)", after)
        after_rss = memory(server, "after")
        print(f"  throughput after / before: {after.rate() / capacity.rate():.2f}; served during overload / "
              f"capacity: {over.rate() / capacity.rate():.2f}; RSS {before_rss:.0f} -> {after_rss:.0f} MiB")


def overload_small(args: argparse.Namespace, images: np.ndarray, max_queue: int) -> None:
    requests = [Request("/predict", orjson.dumps({"pixels": images[i].tolist()})) for i in range(256)]

    def make(n: int) -> Request:
        return requests[n % len(requests)]

    print(f"\n2. overload, small requests: one digit per POST /predict, 256 clients for {args.duration:g} s, "
          f"queue {max_queue} images")
    with LiveServer(args.models_dir, env={"DIGITS_MAX_QUEUE": str(max_queue)}) as server:
        right = checker(server.port, requests, digits_of)
        asyncio.run(closed_loop(server.port, make, clients=8, duration_s=1, check=right))
        before_rss = memory(server, "before")
        capacity = asyncio.run(closed_loop(server.port, make, clients=8, duration_s=3, check=right))
        report("capacity (8 clients)", capacity)
        over = asyncio.run(closed_loop(server.port, make, clients=256, duration_s=args.duration, check=right))
        report("256 clients", over)
        print(f"  shed (503) p50 / served p50: {over.p(50, 503) / over.p(50):.2f} "
              "(below 1: refusing is cheaper than serving)")
        print(f"  offered {over.tried / over.seconds:.0f} requests/s = "
              f"{over.tried / over.seconds / capacity.rate():.1f}x capacity")
        after = asyncio.run(closed_loop(server.port, make, clients=8, duration_s=3, check=right))
        report("after (8 clients)", after)
        after_rss = memory(server, "after")
        print(f"  throughput after / before: {after.rate() / capacity.rate():.2f}; RSS {before_rss:.0f} -> "
              f"{after_rss:.0f} MiB")


def reload_under_load(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray, tmp: Path) -> None:
    """The digits are ones both models read right, so an answer is right whichever model gave it."""
    models = tmp / "models"
    shutil.copytree(args.models_dir, models)
    blobs = [(args.models_dir / "mlp.onnx").read_bytes(), (args.models_dir / "lenet5.onnx").read_bytes()]
    from service.runtime import load_model

    x = images[:400, None].astype(np.float32)
    both = np.ones(len(x), bool)
    for name in ("lenet5", "mlp"):
        both &= load_model(args.models_dir / f"{name}.onnx", warmup_batch_sizes=()).run(x)[1].argmax(1) == labels[:400]
    chosen = np.flatnonzero(both)[:64]
    requests = [Request("/predict", orjson.dumps({"pixels": images[i].tolist()}), headers=(("X-API-Key", KEY),))
                for i in chosen]
    digit_of = {r.body: int(labels[i]) for i, r in zip(chosen, requests, strict=True)}

    def right(request: Request, answer: Answer) -> bool:
        return bool(orjson.loads(answer.body)["predictions"][0]["digit"] == digit_of[request.body])

    def make(n: int) -> Request:
        return requests[n % len(requests)]

    print(f"\n3. reload under steady load: 16 clients for {args.duration:g} s, lenet5 swapped every "
          f"{args.duration / 8:.2f} s, one corrupt file")
    loads: Counter[int] = Counter()
    with LiveServer(models, env={"DIGITS_API_KEY": KEY}) as server:
        asyncio.run(closed_loop(server.port, make, clients=4, duration_s=1, check=right))
        before_rss = memory(server, "before")
        before = asyncio.run(closed_loop(server.port, make, clients=16, duration_s=3, check=right))
        report("before (no reloads)", before)
        stop = threading.Event()

        def reloader() -> None:
            with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as admin:
                n = 0
                while not stop.wait(args.duration / 8):
                    blob = b"\x08\x01corrupt" * 32 if n == 3 else blobs[n % 2]
                    install_model(models, "lenet5", blob, version=str(n + 2))
                    loads[admin.post("/v2/repository/models/lenet5/load").status_code] += 1
                    n += 1

        thread = threading.Thread(target=reloader)
        thread.start()
        try:
            during = asyncio.run(closed_loop(server.port, make, clients=16, duration_s=args.duration, check=right))
        finally:
            stop.set()
            thread.join(60)
        report("during reloads", during)
        after_rss = memory(server, "after")
    other = loads.total() - loads[200] - loads[400]
    print(f"  reloads: {loads[200]} swapped, {loads[400]} refused (the corrupt file), other answers {other}")
    print(f"  throughput during / before: {during.rate() / before.rate():.2f}; p99 {ms(during.p(99))} vs "
          f"{ms(before.p(99))} ms; RSS {before_rss:.0f} -> {after_rss:.0f} MiB")


def sigterm_under_load(args: argparse.Namespace, images: np.ndarray) -> None:
    requests = [Request("/predict", orjson.dumps({"pixels": images[i].tolist()})) for i in range(64)]
    outcomes: Counter[str] = Counter()
    print("\n4. SIGTERM under load: 16 clients, a fresh connection per request, signal after 2 s")

    async def client(port: int, seed: int, stop_at: float, classify: Callable[[str, Answer | None, bytes], str]):
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop_at:
            request = requests[int(rng.integers(len(requests)))]
            outcome = classify(*await exchange_once(port, request), request.body)
            outcomes[outcome] += 1
            if outcome != "right":
                await asyncio.sleep(0.01)

    def classify(outcome: str, answer: Answer | None, body: bytes) -> str:
        if answer is None:
            return outcome
        if answer.status != 200:
            return f"answered {answer.status}"
        return "right" if right(Request("/predict", body), answer) else "wrong"

    with LiveServer(args.models_dir) as server:
        right = checker(server.port, requests, digits_of)
        timeline: dict[str, float] = {}

        async def run() -> int | None:
            stop_at = time.monotonic() + 5.0
            tasks = [asyncio.create_task(client(server.port, seed, stop_at, classify)) for seed in range(16)]
            await asyncio.sleep(2.0)
            timeline["signal"] = time.monotonic()
            server.signal(signal.SIGTERM)
            status = await asyncio.to_thread(server.wait_exit, 30)
            timeline["exit"] = time.monotonic()
            await asyncio.gather(*tasks)
            return status

        status = asyncio.run(run())
    print(f"  outcomes: {dict(outcomes.most_common())}")
    print(f"  exit status {status}{' (SIGTERM re-raised after a graceful shutdown)' if status == -15 else ''}, "
          f"{timeline['exit'] - timeline['signal']:.2f} s after the signal")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of overload and of reloading (default: %(default)s)")
    parser.add_argument("--overload", type=float, default=10.0,
                        help="offered load as a multiple of the measured capacity (default: %(default)s)")
    parser.add_argument("--images", type=int, default=256,
                        help="images per request in the model-bound overload (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=512,
                        help="most open-loop requests in flight at once (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=512,
                        help="DIGITS_MAX_QUEUE for the model-bound overload (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="models (default: models/)")
    parser.add_argument("--only", nargs="+", choices=["overload", "small", "reload", "sigterm"],
                        default=["overload", "small", "reload", "sigterm"], help="parts to run (default: all)")
    args = parser.parse_args()
    images, labels = load_sample("test")
    tmp = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    try:
        if "overload" in args.only:
            overload_model_bound(args, images)
        if "small" in args.only:
            overload_small(args, images, max_queue=512)  # the default queue
            overload_small(args, images, max_queue=32)  # a short queue, as in tests/test_overload.py
        if "reload" in args.only:
            reload_under_load(args, images, labels, tmp)
        if "sigterm" in args.only:
            sigterm_under_load(args, images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
