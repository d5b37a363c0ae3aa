"""What happens when the service starts and stops: models loaded, verified and warmed before the first
request, and the preprocessing worker processes started (:mod:`service.preprocess_pool`); SIGHUP reloads
the models; SIGTERM drains first when a drain period is set (:mod:`service.drain`); shutdown finishes
queued requests, then stops the workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from service.drain import Drain
from service.preprocess_pool import PreprocessPool
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger("service")


def lifespan(settings: Settings, registry: ModelRegistry, drain: Drain,
             pool: PreprocessPool) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        # Uploads are decoded in the thread pool; a large image takes up to ~8 bytes per pixel while it is
        # decoded, so the pool's size (anyio's default: 40) times max_image_pixels is the memory a burst of
        # uploads can take. Inference has its own threads (one per batcher) and is not affected.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.decode_threads
        await asyncio.gather(registry.load_all(), pool.start())  # the worker processes import while models load
        # Everything alive now (modules, models, sessions) lives as long as the process: move it out of
        # the garbage collector's reach. Otherwise each full collection walks all ~70k of those objects
        # and stalls every request in flight for ~50 ms, which is the p99 of a busy server.
        gc.collect()
        gc.freeze()
        if registry.ready:
            log.info("ready: %s (default %s)", ", ".join(registry.served), registry.default_model)
        else:
            log.error("NOT ready: %s", registry.status())
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[dict[str, str]]] = set()

        def on_sighup() -> None:  # reload every model from disk, verified before each swap
            log.info("SIGHUP: reloading models from %s", settings.models_dir)
            task = loop.create_task(registry.reload_all())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or no SIGHUP
            log.debug("SIGHUP reload not available in this process")
        drain.install(loop)  # SIGTERM drains first when DIGITS_SHUTDOWN_DRAIN_S > 0
        yield
        drain.uninstall()
        log.info("shutting down: finishing queued requests")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await registry.close()
        await pool.close()

    return run
