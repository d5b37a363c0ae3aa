"""Every setting of the service, read from DIGITS_* environment variables (or passed in by tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.machine import usable_cores
from service.runtime import REPO_MODELS_DIR


def default_decode_threads(cores: int) -> int:
    """Images decoded at once by default: one fewer than the cores, at least 1, at most 4. Decoding
    shares the Python interpreter with the event loop, which needs it for every request: on 2 cores,
    1 decoding thread served 1.3x the canvas uploads of 4 (bench/RESULTS.md)."""
    return max(1, min(4, cores - 1))


class Settings(BaseSettings):
    """Built inside the app factory (``create_app(settings)``), never at import time."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore", frozen=True)

    # Where and how to listen (used by `digits serve`).
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 for every interface")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each with its own models and batchers")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    access_log: bool = Field(False, description="log every request (costs about 15% throughput)")
    shutdown_drain_s: float = Field(
        0.0, ge=0, description="on SIGTERM, answer /readyz with 503 and close every connection after its "
                               "response for this long before stopping (behind a load balancer: 5 to 15)"
    )

    # Models.
    models_dir: Path = Field(REPO_MODELS_DIR, description="folder holding manifest.json and the ONNX files")
    default_model: str | None = Field(
        None, description="model used when a request names none (default: the manifest's)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when onnxruntime-gpu and a GPU are present, else CPU; cuda: fail if not"
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per inference (0: one per core)")

    # Dynamic batching (one batcher per model).
    max_batch_size: int = Field(64, ge=1, description="most images in one inference call; 1 turns batching off")
    max_delay_ms: float = Field(
        0.0, ge=0, description="0: dispatch at once when the model is idle; >0: wait up to this long to fill a batch"
    )
    inline_inference: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: a batch cheaper than a hand-off to the inference thread (measured at start-up) "
                            "runs on the event loop; on: whatever takes under 1 ms; off: never"
    )
    max_queue: int = Field(512, ge=1, description="most images waiting per model; beyond it requests get 503")
    request_timeout_s: float = Field(10.0, gt=0, description="a request waiting longer than this gets 504")

    # Input limits.
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest request body; beyond it 413")
    max_images_per_request: int = Field(256, ge=1, description="most images in one request; beyond it 413")
    max_image_pixels: int = Field(
        40_000_000, ge=784, description="largest decoded image (width x height), checked before decoding; beyond it 413"
    )
    decode_inline_pixels: int = Field(
        250_000, ge=0, description="PNG uploads of up to this many pixels in all (a request's, by their headers) "
                                   "are decoded on the event loop, larger images and other formats in the "
                                   "decoding threads: a thread hand-off costs a small image more than it gives "
                                   "(on 2 cores, canvas uploads ran 1.5x as fast on the loop); 0: always threads",
    )
    decode_threads: int = Field(
        default_factory=lambda: default_decode_threads(usable_cores()),
        ge=1,
        description="images decoded at once in threads (those not decoded on the event loop: see "
                    "decode_inline_pixels; others wait their turn); default: one fewer than the cores, at least "
                    "1 and at most 4 (the event loop needs the Python interpreter too: on 2 cores, 1 decoding thread "
                    "served 1.3x the uploads of 4); decoding takes up to ~8 bytes per pixel, so this times "
                    "max_image_pixels bounds the memory uploads can take",
    )

    decode_processes: int | None = Field(
        None, ge=0,
        description="worker processes that preprocess small PNG uploads (those decoded on the event loop) beside "
                    "the loop while it has other requests to serve, each up to its share of the requests in flight "
                    "(service/preprocess_pool.py); unset: the cores each server process has beyond its own, at "
                    "most 2 (1 on 2 cores with one uvicorn worker); 0: none",
    )

    # Access control.
    api_key: SecretStr | None = Field(None, description="when set, prediction needs it (Bearer or X-API-Key)")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (default: none)")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value
