"""The app factory. ``create_app(settings)`` builds everything; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service import api, read, repository, v2, web
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import ServiceMiddleware
from service.registry import ModelRegistry
from service.security import PROTECTED
from service.settings import Settings

log = logging.getLogger("service")

VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Uploads are decoded in the thread pool; a large image takes up to ~8 bytes per pixel while it is
        # decoded, so the pool's size (anyio's default: 40) times max_image_pixels is the memory a burst of
        # uploads can take. Inference has its own threads (one per batcher) and is not affected.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.decode_threads
        await registry.load_all()
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
        yield
        log.info("shutting down: finishing queued requests")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await registry.close()

    app = FastAPI(
        title="digits",
        version=VERSION,
        description="Handwritten digit recognition on ONNX Runtime with dynamic batching.",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(read.router)
    app.include_router(v2.router)
    if settings.api_key is not None:  # model management exists only behind a key
        app.include_router(repository.router)
    web.mount(app)
    # Outermost last: limits, auth and metrics see every request, before any body is read, and CORS
    # wraps them: a browser's preflight carries no key (it must not get 401), and a 401 or 413 needs
    # the CORS headers for the page that sent the request to read it.
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics,
                       api_key=settings.api_key.get_secret_value() if settings.api_key else None)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "Inference-Header-Content-Length"],
                           expose_headers=["Inference-Header-Content-Length"])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in api.SCHEMAS:  # bodies parsed by hand, documented here
                components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            if settings.api_key is not None:
                _document_api_key(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_api_key(schema: dict[str, Any]) -> None:
    """Declare the API key (both ways of sending it) on the operations that need it, with their 401."""
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <DIGITS_API_KEY>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the DIGITS_API_KEY"},
    }
    for path, operations in schema["paths"].items():
        if not PROTECTED.match(path):  # templates like /v2/models/{model_name}/infer match as any name would
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["responses"]["401"] = {
                "description": "missing or wrong API key",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }


def app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from DIGITS_* variables, read now, not at import."""
    return create_app(Settings())
