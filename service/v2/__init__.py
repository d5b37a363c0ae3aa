"""The KServe v2 / Open Inference Protocol surface: request and response models (``schemas``) and
routes (``routes``); the binary tensor codec it shares with the remote client is :mod:`core.v2codec`."""

from service.v2.routes import router

__all__ = ["router"]
