"""Load benchmark of the service on 127.0.0.1, every configuration side by side in one run.

For each server configuration (batching on / off, 1 and 2 workers) it starts `digits serve`,
then drives it with wrk (Debian package `wrk`) at several client counts:

* json    POST /predict with one MNIST-style 28x28 array (a real test digit)
* png     POST /predict with a 280x280 RGBA canvas PNG upload (multipart)
* trivial GET /healthz of the same app: the HTTP ceiling of this stack

and, as configuration "bare", a bare FastAPI endpoint (bench/bare_app.py) on uvicorn: the ceiling
of FastAPI on uvicorn itself on this machine (the reference the issue measured before the project).

and prints requests/s, p50 and p99 latency and non-2xx answers, then the ratios the
service is judged by. All servers run at once; every measurement is taken --rounds times,
interleaved with the others, and the medians are reported. Every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testkit.data import load_sample
from testkit.live_server import free_port, start_server, stop_server, wait_ready

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {  # name -> (environment, workers)
    "batched": ({"DIGITS_MAX_BATCH_SIZE": "64"}, 1),
    "unbatched": ({"DIGITS_MAX_BATCH_SIZE": "1"}, 1),
    "batched-thread": ({"DIGITS_MAX_BATCH_SIZE": "64", "DIGITS_INLINE_INFERENCE": "off"}, 1),  # never inline
    "batched-2w": ({"DIGITS_MAX_BATCH_SIZE": "64"}, 2),
    "unbatched-2w": ({"DIGITS_MAX_BATCH_SIZE": "1"}, 2),
    "bare": ({}, 1),  # bench/bare_app.py: trivial endpoint only
    "bare-2w": ({}, 2),  # the same on two uvicorn workers: the scaling two workers can reach here
    "baseline": ({"DIGITS_MAX_BATCH_SIZE": "64"}, 1),  # batched, from the --baseline checkout
    "stock": ({"DIGITS_MAX_BATCH_SIZE": "64"}, 1),  # batched, routes on FastAPI's APIRoute
    "naive": ({}, 1),  # bench/naive_app.py: inference inline in the handler, naive upload preprocessing
}
DEFAULT_CONFIGS = ["batched", "unbatched", "batched-2w", "unbatched-2w", "bare", "bare-2w", "naive"]
PEERS = {"bare": "bench.bare_app:app", "bare-2w": "bench.bare_app:app",
         "naive": "bench.naive_app:app"}  # plain uvicorn apps, not `digits serve`
PEER_PATHS = {("naive", "png"): "/upload"}  # where a peer takes a request kind, when not the service's path


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    requests: int


def _median(runs: list[Result]) -> Result:
    """Each figure's median over the rounds (non-2xx answers: their total)."""
    return Result(statistics.median(r.rps for r in runs), statistics.median(r.p50_ms for r in runs),
                  statistics.median(r.p99_ms for r in runs), sum(r.non2xx for r in runs),
                  sum(r.requests for r in runs))


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, script: Path, clients: int, duration: float, threads: int) -> Result:
    cmd = ["wrk", f"-t{min(threads, clients)}", f"-c{clients}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Result(rps, p50, p99, int(bad.group(1)) if bad else 0, total)


def wrk_script(directory: Path, name: str, method: str, body: bytes = b"", content_type: str = "") -> Path:
    body_path = directory / f"{name}.body"
    body_path.write_bytes(body)
    lines = [f'wrk.method = "{method}"']
    if body:
        lines.append(f'local f = io.open("{body_path}", "rb"); wrk.body = f:read("*a"); f:close()')
        lines.append(f'wrk.headers["Content-Type"] = "{content_type}"')
    path = directory / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def canvas_png(digit: np.ndarray) -> bytes:
    """A digit drawn as a browser canvas exports it: 280x280 RGBA, transparent background."""
    from PIL import Image

    big = np.array(Image.fromarray(digit).resize((200, 200), Image.Resampling.BICUBIC))
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[40:240, 40:240, 3] = big
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "digitsbenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start(config: str, port: int, models_dir: Path, baseline: Path | None = None) -> subprocess.Popen:
    env_extra, workers = CONFIGS[config]
    if config in ("baseline", "stock"):
        if config == "baseline" and baseline is None:
            raise SystemExit("--configs baseline needs --baseline DIR (a checkout of the code to compare with)")
        command = ["-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"] \
            if config == "baseline" else \
            ["-m", "uvicorn", "bench.stock_routes_app:app_from_env", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, "DIGITS_MODELS_DIR": str(models_dir), **env_extra}
        proc = subprocess.Popen([sys.executable, *command], cwd=baseline if config == "baseline" else REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_ready(port, proc, timeout_s=90)
        return proc
    if config in PEERS:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", PEERS[config], "--host", "127.0.0.1", "--port", str(port),
             "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
             "--workers", str(workers)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_ready(port, proc, timeout_s=30, path="/healthz" if config.startswith("bare") else "/docs")
        return proc
    proc = start_server(port, models_dir, output=subprocess.DEVNULL, DIGITS_WORKERS=str(workers), **env_extra)
    wait_ready(port, proc, timeout_s=90)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256],
                        help="concurrent connections to test (default: 1 16 64 256)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=DEFAULT_CONFIGS,
                        help=f"server configurations (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of the code to compare with, served as configuration 'baseline'")
    parser.add_argument("--kinds", nargs="+", choices=["json", "png", "trivial"], default=["json", "png", "trivial"],
                        help="request kinds (default: all)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each measurement is taken, interleaved; medians are reported (default: 3)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="models (default: models/)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")

    images, _ = load_sample("test")
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    import orjson

    png_body, png_type = multipart(canvas_png(images[0]))
    scripts = {
        "json": ("/predict", wrk_script(tmp, "json", "POST", orjson.dumps({"pixels": images[0].tolist()}),
                                        "application/json")),
        "png": ("/predict", wrk_script(tmp, "png", "POST", png_body, png_type)),
        "trivial": ("/healthz", wrk_script(tmp, "trivial", "GET")),
    }
    # Every server runs for the whole benchmark (an idle one costs nothing), and each round measures
    # every cell once, so each comparison is between measurements taken minutes apart at most, and the
    # median of the rounds rides out this machine's swings in speed.
    cells = [(config, kind, clients) for config in args.configs for kind in args.kinds for clients in args.clients
             # /healthz: on the batched server and the baseline only
             if not (kind == "trivial" and config.startswith(("unbatched", "stock", "naive")))
             and not (config.startswith("bare") and kind != "trivial")]  # the bare app has no model
    ports: dict[str, int] = {}
    procs: list[subprocess.Popen] = []
    rounds: dict[tuple[str, str, int], list[Result]] = {cell: [] for cell in cells}
    try:
        for config in args.configs:
            ports[config] = free_port()
            procs.append(start(config, ports[config], args.models_dir, args.baseline))
        for config, kind in dict.fromkeys((config, kind) for config, kind, _ in cells):
            path, script = scripts[kind]
            path = PEER_PATHS.get((config, kind), path)
            run_wrk(f"http://127.0.0.1:{ports[config]}{path}", script, 16, 1.0, args.wrk_threads)  # warm-up
        for number in range(1, args.rounds + 1):
            print(f"round {number} of {args.rounds}", flush=True)
            for config, kind, clients in cells:
                path, script = scripts[kind]
                url = f"http://127.0.0.1:{ports[config]}{PEER_PATHS.get((config, kind), path)}"
                rounds[(config, kind, clients)].append(run_wrk(url, script, clients, args.duration, args.wrk_threads))
    finally:
        for proc in procs:
            stop_server(proc)

    results = {cell: _median(runs) for cell, runs in rounds.items()}
    print(f"\nmedian of {args.rounds} rounds")
    print(f"{'config':<13} {'kind':<8} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for (config, kind, clients), r in results.items():
        print(f"{config:<13} {kind:<8} {clients:>7} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.non2xx:>8}")

    def get(config: str, kind: str, clients: int) -> Result | None:
        return results.get((config, kind, clients))

    print("\nratios")
    for workers in ("", "-2w"):
        triv, bat = get(f"batched{workers}", "trivial", 64), get(f"batched{workers}", "json", 64)
        if triv and bat:
            print(f"  batched{workers} json / trivial at 64 clients: {bat.rps / triv.rps:.2f}  (/healthz is served "
                  "past the router; the bare endpoint is the reference)")
        for kind in args.kinds:
            for clients in args.clients:
                b, u = get(f"batched{workers}", kind, clients), get(f"unbatched{workers}", kind, clients)
                if b and u and kind != "trivial":
                    print(f"  batched{workers} / unbatched {kind} at {clients:>3} clients: {b.rps / u.rps:.2f} "
                          f"(p99 {b.p99_ms:.1f} vs {u.p99_ms:.1f} ms)")
    for clients in args.clients:
        bare, triv, bat = get("bare", "trivial", clients), get("batched", "trivial", clients), \
            get("batched", "json", clients)
        if bare and triv and bat:
            print(f"  at {clients:>3} clients, against a bare FastAPI endpoint: the service's trivial endpoint "
                  f"{triv.rps / bare.rps:.2f}, batched json {bat.rps / bare.rps:.2f} (bare p99 {bare.p99_ms:.1f} ms)")
    for kind in args.kinds:
        for clients in args.clients:
            bat, naive = get("batched", kind, clients), get("naive", kind, clients)
            if bat and naive:
                print(f"  batched / naive {kind} at {clients:>3} clients: {bat.rps / naive.rps:.2f} "
                      f"(p50 {bat.p50_ms:.2f} vs {naive.p50_ms:.2f} ms, p99 {bat.p99_ms:.1f} vs {naive.p99_ms:.1f} ms)")
    b1, u1 = get("batched", "json", 1), get("unbatched", "json", 1)
    if b1 and u1:
        print(f"  lone client p50: batched {b1.p50_ms:.3f} ms vs unbatched {u1.p50_ms:.3f} ms "
              f"(difference {b1.p50_ms - u1.p50_ms:+.3f} ms, target within 0.3)")
    for other, what in (("baseline", "this checkout / baseline"), ("stock", "LeanRoute / stock APIRoute")):
        for kind in args.kinds:
            for clients in args.clients:
                new, old = get("batched", kind, clients), get(other, kind, clients)
                if new and old:
                    print(f"  {what}, batched {kind} at {clients:>3} clients: {new.rps / old.rps:.2f} "
                          f"(p50 {new.p50_ms:.2f} vs {old.p50_ms:.2f} ms, p99 {new.p99_ms:.1f} vs {old.p99_ms:.1f} ms)")
    for kind in args.kinds:
        for clients in args.clients:
            one, two = get("batched", kind, clients), get("batched-2w", kind, clients)
            bare_one, bare_two = get("bare", "trivial", clients), get("bare-2w", "trivial", clients)
            if one and two:
                against = ""
                if bare_one and bare_two:  # the load generator shares the cores: 2x is out of reach for anyone
                    bare_scaling = bare_two.rps / bare_one.rps
                    against = (f"; the bare endpoint's own: {bare_scaling:.2f}, so "
                               f"{two.rps / one.rps / bare_scaling:.2f} of it (target >= 0.9)")
                print(f"  2 workers / 1 worker, batched {kind} at {clients:>3} clients: "
                      f"{two.rps / one.rps:.2f}{against}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
