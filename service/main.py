"""`digits serve`: run the service under uvicorn. Options override the DIGITS_* environment."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from pydantic import ValidationError

from service.runtime import DeviceError, select_providers
from service.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = Settings.model_fields
    for flag, kind in (("host", str), ("port", int), ("models-dir", Path), ("workers", int)):
        name = flag.replace("-", "_")
        parser.add_argument(f"--{flag}", type=kind, default=None,
                            help=f"{fields[name].description} (env DIGITS_{name.upper()}, "
                                 f"default: {fields[name].get_default(call_default_factory=True)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help=f"{fields['device'].description} (env DIGITS_DEVICE, default: auto)")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default=None,
                        help="log level (env DIGITS_LOG_LEVEL, default: info)")
    parser.epilog = "Every other setting is read from its DIGITS_* variable; see the README's table."


def main(args: argparse.Namespace) -> int:
    import uvicorn

    # Options become DIGITS_* variables so every worker process builds the same Settings.
    for name in ("host", "port", "models_dir", "workers", "device", "log_level"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"DIGITS_{name.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        select_providers(settings.device)  # --device cuda without a GPU build fails here, before binding
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (settings.models_dir / "manifest.json").is_file():
        print(f"error: no manifest.json in {settings.models_dir}; pass --models-dir or set DIGITS_MODELS_DIR",
              file=sys.stderr)
        return 2
    busy = port_problem(settings.host, settings.port)  # before loading models and logging "ready"
    if busy is not None:
        print(f"error: {busy}", file=sys.stderr)
        return 2
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    return 0


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (another server holds it, a bad address), or None.

    Bound and released again at once, with the options uvicorn binds with; uvicorn binds it for real
    only after the models are loaded, too late for a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return (f"cannot listen on {host}:{port}: {exc.strerror or exc}. Is another `digits serve` running? "
                    "Stop it, or choose another port: --port N, DIGITS_PORT=N, or `make serve PORT=N`")
    return None
