"""CPU time per request through the whole app in-process (middleware, routing, validation, batcher,
inference; no sockets), for this checkout, another checkout (``--baseline DIR``) and this checkout with
FastAPI's stock APIRoute in place of LeanRoute (bench/stock_routes_app.py). Requests: /predict with JSON
pixels, v2 infer, GET /healthz, and /predict with a drawing page's canvas PNG upload (multipart).

Process CPU time, not wall time: other programs on a busy machine barely move it, where wrk's
requests/s swing by half. Each variant runs in its own process (both checkouts have a ``service``
package), the variants alternate over --rounds, and the best of each round's repeats is kept; the
medians over rounds and their ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KINDS = ("json", "v2", "trivial", "png")

# Run inside each variant's process: argv = checkout, kind, requests, stock (0/1), digit.npy, concurrency,
# upload (a multipart body file), its content type
_CHILD = r'''
import asyncio, os, sys, time
import uvloop
checkout, kind, n, stock, digit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
concurrency = int(sys.argv[6])
with open(sys.argv[7], "rb") as f:
    upload = f.read()
sys.path.insert(0, checkout)
os.chdir(checkout)
import numpy as np, orjson
if stock:
    import bench.stock_routes_app  # noqa: F401  (swaps LeanRoute for APIRoute before the routes are built)
from service.app import create_app
from service.settings import Settings

app = create_app(Settings(models_dir=os.path.join(checkout, "models")))
image = np.load(digit)
method, path, body = {
    "json": ("POST", "/predict", orjson.dumps({"pixels": image.tolist()})),
    "v2": ("POST", "/v2/models/lenet5/infer", orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28],
           "datatype": "FP32", "data": image.astype(float).ravel().tolist()}]})),
    "trivial": ("GET", "/healthz", b""),
    "png": ("POST", "/predict", upload),
}[kind]
content_type = sys.argv[8].encode() if kind == "png" else b"application/json"
scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
         "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
         "root_path": "", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "app": app,
         "http_version": "1.1", "asgi": {"version": "3.0"}}
statuses = set()

async def receive():
    return {"type": "http.request", "body": body, "more_body": False}

async def send(message):
    if message["type"] == "http.response.start":
        statuses.add(message["status"])

async def client(requests):
    for _ in range(requests):
        await app(dict(scope), receive, send)

async def main():
    async with app.router.lifespan_context(app):
        await client(300)
        best = float("inf")
        per_client = max(1, n // concurrency)
        for _ in range(5):
            started = time.process_time()
            await asyncio.gather(*(client(per_client) for _ in range(concurrency)))
            best = min(best, (time.process_time() - started) / (per_client * concurrency))
    assert statuses == {200}, statuses
    print(best * 1e6)

uvloop.run(main())  # the event loop uvicorn runs the service on
'''


def measure(checkout: Path, kind: str, requests: int, stock: bool, digit: Path, concurrency: int,
            upload: tuple[Path, str]) -> float:
    # No preprocessing worker process: its CPU would not be this process's (the pool's own benefit is
    # measured under load by bench_service.py).
    out = subprocess.run([sys.executable, "-c", _CHILD, str(checkout), kind, str(requests), "1" if stock else "0",
                          str(digit), str(concurrency), str(upload[0]), upload[1]],
                         capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, "DIGITS_DECODE_PROCESSES": "0"}).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="requests: /predict JSON pixels, v2 infer JSON, GET /healthz, /predict with a 280x280 "
                             "canvas PNG upload (multipart, as the drawing page sends it) (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the variants (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per repeat (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight at once (default: %(default)s, one after another; at 64 the "
                             "batcher batches, as under load)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from bench.bench_service import canvas_png, multipart
    from training.download import load_split

    images, _ = load_split("mnist", "test", REPO / "tests" / "data" / "mnist-sample", verify=False,
                           download_missing=False)
    variants = {"this": (REPO, False), "stock": (REPO, True)}
    if args.baseline is not None:
        variants["baseline"] = (args.baseline.resolve(), False)
    with tempfile.TemporaryDirectory() as tmp:
        digit = Path(tmp) / "digit.npy"
        np.save(digit, images[0])
        body, content_type = multipart(canvas_png(images[0]))
        upload = (Path(tmp) / "canvas.multipart", content_type)
        upload[0].write_bytes(body)
        results: dict[tuple[str, str], list[float]] = {}
        for number in range(1, args.rounds + 1):
            print(f"round {number} of {args.rounds}", flush=True)
            for kind in args.kinds:
                for name, (checkout, stock) in variants.items():
                    if stock and kind in ("trivial", "png"):
                        continue  # neither is a question of LeanRoute's JSON validation
                    results.setdefault((kind, name), []).append(
                        measure(checkout, kind, args.requests, stock, digit, args.concurrency, upload))
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nCPU µs per request, median of {args.rounds} rounds (each the best of 5 x {args.requests}, "
          f"{args.concurrency} at once)")
    for (kind, name), value in median.items():
        print(f"  {kind:<8} {name:<9} {value:8.1f}")
    print("\nratios (below 1: this checkout costs less)")
    for kind in args.kinds:
        for other in ("baseline", "stock"):
            if (kind, other) in median:
                print(f"  {kind:<8} this / {other:<9} {median[(kind, 'this')] / median[(kind, other)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
