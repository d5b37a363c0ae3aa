"""The app factory. ``create_app(settings)`` builds the app; nothing happens at import time.

What the app does when it starts and stops is :mod:`service.lifespan`; its OpenAPI document and
documentation pages are :mod:`service.openapi`; errors become answers in :mod:`service.errors`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from core.machine import usable_cores
from service import api, openapi, read, repository, v2, web
from service.drain import Drain
from service.errors import install_error_handlers
from service.lifespan import lifespan
from service.metrics import Metrics
from service.middleware import ServiceMiddleware
from service.preprocess_pool import PreprocessPool, default_processes
from service.registry import ModelRegistry
from service.routing import DirectRoutes
from service.settings import Settings

VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    drain = Drain(settings.shutdown_drain_s, registry.status)
    processes = settings.decode_processes
    pool = PreprocessPool(default_processes(usable_cores(), settings.workers) if processes is None else processes)
    app = FastAPI(
        title="digits",
        version=VERSION,
        description="Handwritten digit recognition on ONNX Runtime with dynamic batching.",
        lifespan=lifespan(settings, registry, drain, pool),
        docs_url=None,  # served by service.openapi from packaged assets
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.drain = drain
    app.state.preprocess_pool = pool
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(read.router)
    app.include_router(v2.router)
    if repository.enabled(settings):
        app.include_router(repository.router)
    openapi.install(app, api_key=settings.api_key is not None)
    web.mount(app)
    # Outermost last: limits and metrics see every request, before any body is read, and CORS wraps
    # them: a browser's preflight carries no key (it must not get 401), and a 401 or 413 needs the CORS
    # headers for the page that sent the request to read it.
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics, drain=drain,
                       direct=DirectRoutes(app.routes, [api.router, read.router]))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "Inference-Header-Content-Length"],
                           expose_headers=["Inference-Header-Content-Length"])
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from DIGITS_* variables, read now, not at import."""
    return create_app(Settings())
