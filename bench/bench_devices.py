"""CPU against CUDA for the shipped models, side by side in one run: parity and throughput per batch size.

Needs the GPU build of ONNX Runtime (`pip install -e '.[serve,gpu]'` after `pip uninstall onnxruntime`) and a
GPU; without the CUDA execution provider it says so and exits with status 2. Prints, per model, whether both
devices predict the same digits on the real MNIST sample (argmax agreement, largest probability difference,
accuracy), then images/s at each batch size and the CUDA/CPU ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.contract import IMAGE_SHAPE, INPUT_NAME
from service.runtime import CUDA_OPTIONS
from testkit.data import load_mnist

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def _seconds_per_run(session: ort.InferenceSession, batch: np.ndarray, min_seconds: float) -> float:
    for _ in range(20):  # warm-up: allocations, kernel selection
        session.run(None, {"pixels": batch})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        session.run(None, {"pixels": batch})
        runs += 1
    return (time.perf_counter() - start) / runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "mlp"],
                        help="models/NAME.onnx to compare (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024],
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per timing (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "tests" / "data" / "mnist-sample",
                        help="MNIST IDX files for the parity check (default: the repository's sample)")
    args = parser.parse_args(argv)
    if CUDA not in ort.get_available_providers():
        print(f"this onnxruntime build has no {CUDA} (available: {ort.get_available_providers()}); "
              "install onnxruntime-gpu on a machine with a GPU", file=sys.stderr)
        return 2
    images, labels = load_mnist(args.data_dir, "test")
    pixels = images.reshape(-1, *IMAGE_SHAPE).astype(np.float32)  # raw 0-255, as the contract says

    for model in args.models:
        path = str(REPO / "models" / f"{model}.onnx")
        cpu = ort.InferenceSession(path, providers=[CPU])
        gpu = ort.InferenceSession(path, providers=[(CUDA, CUDA_OPTIONS), CPU])
        p_cpu = cpu.run(["probabilities"], {INPUT_NAME: pixels})[0]
        p_gpu = gpu.run(["probabilities"], {INPUT_NAME: pixels})[0]
        print(f"{model} on {gpu.get_providers()[0]}: {len(pixels)} images, argmax agreement "
              f"{np.mean(p_cpu.argmax(1) == p_gpu.argmax(1)):.4f}, max |dp| {np.abs(p_cpu - p_gpu).max():.1e}, "
              f"accuracy cpu {np.mean(p_cpu.argmax(1) == labels):.4f} cuda {np.mean(p_gpu.argmax(1) == labels):.4f}")
        for size in args.batch_sizes:
            batch = np.ascontiguousarray(np.resize(pixels, (size, 1, 28, 28)))
            t_cpu = _seconds_per_run(cpu, batch, args.seconds)
            t_gpu = _seconds_per_run(gpu, batch, args.seconds)
            print(f"  batch {size:5d}: cpu {size / t_cpu:>11,.0f} img/s   cuda {size / t_gpu:>11,.0f} img/s   "
                  f"cuda/cpu {t_cpu / t_gpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
