"""The OpenAPI document and the pages that show it (/docs: Swagger UI, /redoc: ReDoc), served from
assets shipped in the ``fastapi-offline`` package: no CDN, so the pages work without internet.

The document is FastAPI's, generated from the routes, plus the /predict body models (the route reads
its body itself, as JSON, multipart or a raw image). The API-key security of a route comes from its
declared guard (``dependencies=[API_KEY]``); without a key configured the guard lets everything through,
so the document then declares none.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from service import api

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = files("fastapi_offline") / "static"


def build_schema(app: FastAPI, *, api_key: bool) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for model in api.SCHEMAS:  # bodies read by the route, documented here
        models[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, operations in schema["paths"].items():
        error_model = "V2Error" if path.startswith("/v2") and not path.startswith("/v2/repository") else "ErrorResponse"
        for operation in operations.values():
            _answer_errors_as(operation, error_model)
            if "security" not in operation:
                continue
            if not api_key:
                del operation["security"]
                continue
            operation["responses"]["401"] = {
                "description": "missing or wrong API key (code: unauthorized)",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_model}"}}},
            }
    if not api_key:
        components.pop("securitySchemes", None)
    models.pop("HTTPValidationError", None)
    models.pop("ValidationError", None)
    return schema


def _answer_errors_as(operation: dict[str, Any], model: str) -> None:
    """FastAPI documents a 422 of its own shape (HTTPValidationError); this service answers every error
    in one shape (see service.errors)."""
    invalid = operation.get("responses", {}).get("422")
    if invalid is not None and "HTTPValidationError" in str(invalid):
        invalid["description"] = "invalid request (code: invalid_request)"
        invalid["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}


def install(app: FastAPI, *, api_key: bool) -> None:
    """Replace FastAPI's OpenAPI builder, and serve /docs and /redoc from the packaged assets.
    ``create_app`` passes ``docs_url=None, redoc_url=None`` so these are the only doc pages."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, api_key=api_key)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIR)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
