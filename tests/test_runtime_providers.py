"""Execution-provider choices that do not need a GPU to check."""

from __future__ import annotations

from service import runtime


def test_cuda_gets_the_heuristic_cudnn_search_and_the_cpu_stays_plain() -> None:
    # Dynamic batching makes every batch size a new input shape; the exhaustive search would run for each.
    args = runtime._with_options([runtime.CUDA, runtime.CPU])
    assert args == [(runtime.CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), runtime.CPU]
    assert runtime._with_options([runtime.CPU]) == [runtime.CPU]
