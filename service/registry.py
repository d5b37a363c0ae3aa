"""The models a service process serves, each with its own batcher. Owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from service.batcher import BatcherClosedError, DynamicBatcher
from service.metrics import Metrics
from service.runtime import (
    CUDA,
    LoadedModel,
    Manifest,
    ModelError,
    load_manifest_models,
    load_model,
    read_manifest,
    select_providers,
)
from service.settings import Settings

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """No model (or no such version of it) by that name is served."""


class ModelUnavailableError(Exception):
    """The model is listed in the manifest but failed to load."""


class ModelLoadError(Exception):
    """A (re)load was refused: bad manifest, file or contract; what was serving keeps serving."""


class RequestTimeoutError(TimeoutError):
    """A request waited longer than the request timeout (for a decode thread or for the model)."""


@dataclass
class Served:
    """One model being served, with its batcher."""

    model: LoadedModel
    batcher: DynamicBatcher


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.served: dict[str, Served] = {}
        self.failed: dict[str, str] = {}
        self.manifest: Manifest | None = None
        self.default_model: str | None = None
        self._providers: list[str] = []
        self._swap_lock = asyncio.Lock()

    async def _batcher(self, model: LoadedModel) -> DynamicBatcher:
        s = self.settings
        metrics = self.metrics
        batcher = DynamicBatcher(
            model.run,
            max_batch_size=s.max_batch_size,
            max_delay_ms=s.max_delay_ms,
            max_queue=s.max_queue,
            name=model.name,
            observer=metrics.batch_observer(model.name),
            inline=s.inline_inference,
        )
        await batcher.calibrate(np.zeros((1, 1, 28, 28), np.float32))
        metrics.track_pending(model.name, lambda: batcher.pending)
        batcher.start()
        return batcher

    async def load_all(self) -> None:
        """Load, verify and warm every model of the manifest (in a thread: it takes a while)."""
        s = self.settings
        self._providers = providers = select_providers(s.device)
        if s.device == "auto" and CUDA not in providers:
            log.info("device auto: no CUDA execution provider in this onnxruntime build; running on the CPU")
        manifest, loaded, failed = await asyncio.to_thread(
            load_manifest_models, s.models_dir, providers=providers, intra_op_threads=s.intra_op_threads,
            warmup_batch_sizes=self._warmup_sizes,
        )
        self.manifest = manifest
        self.failed = failed
        for name, model in loaded.items():
            self.served[name] = Served(model, await self._batcher(model))
        self.default_model = s.default_model or manifest.default_model or next(iter(loaded), None)
        if self.default_model not in {e.name for e in manifest.entries}:
            log.error("default model %r is not in %s", self.default_model, manifest.path)

    @property
    def _warmup_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({1, self.settings.max_batch_size}))

    async def load(self, name: str) -> LoadedModel:
        """(Re)load one model from the manifest on disk, then swap it in atomically.

        The new file is verified (checksum, input/output contract) and warmed up before the swap;
        a bad file raises ModelLoadError and the model already serving keeps serving. Requests
        queued on the old model finish on it (its batcher drains) while new ones go to the new one.
        """
        async with self._swap_lock:
            try:
                manifest = await asyncio.to_thread(read_manifest, self.settings.models_dir)
            except ModelError as exc:
                raise ModelLoadError(f"model {name!r} not loaded: {exc}") from None
            entry = next((e for e in manifest.entries if e.name == name), None)
            if entry is None:
                raise UnknownModelError(
                    f"model {name!r} is not in {manifest.path}; add it with `digits export --manifest`")
            try:
                model = await asyncio.to_thread(
                    load_model, entry.file, name=entry.name, expected_sha256=entry.sha256, version=entry.version,
                    providers=self._providers, intra_op_threads=self.settings.intra_op_threads,
                    warmup_batch_sizes=self._warmup_sizes, manifest=entry.raw,
                )
            except ModelError as exc:  # refused: the version already serving keeps serving
                keeps = "the loaded version keeps serving" if name in self.served else "it is not served"
                log.error("reload of %s rejected (%s): %s", name, keeps, exc)
                raise ModelLoadError(f"model {name!r} not loaded ({keeps}): {exc}") from None
            old = self.served.get(name)
            self.served[name] = Served(model, await self._batcher(model))
            self.failed.pop(name, None)
            self.manifest = manifest
            log.info("model %s v%s loaded from %s (sha256 %s)", name, model.version, entry.file, model.sha256[:12])
        if old is not None:
            await old.batcher.close()
        return model

    async def unload(self, name: str) -> None:
        """Stop serving a model; queued requests still finish."""
        async with self._swap_lock:
            served = self.served.pop(name, None)
        if served is None:
            raise UnknownModelError(f"model {name!r} is not loaded")
        await served.batcher.close()
        log.info("model %s unloaded", name)

    async def reload_all(self) -> dict[str, str]:
        """Reload every model of the manifest (SIGHUP); returns name -> 'ready' or why it was rejected."""
        try:
            names = [e.name for e in (await asyncio.to_thread(read_manifest, self.settings.models_dir)).entries]
        except ModelError as exc:
            log.error("reload rejected, every model keeps serving: %s", exc)
            return {}
        outcome: dict[str, str] = {}
        for name in names:
            try:
                await self.load(name)
                outcome[name] = "ready"
            except (ModelLoadError, UnknownModelError) as exc:
                outcome[name] = str(exc)
        return outcome

    @property
    def ready(self) -> bool:
        return bool(self.served) and not self.failed and self.default_model in self.served

    def status(self) -> dict[str, str]:
        out = {name: "ready" for name in self.served}
        out.update({name: f"failed: {why}" for name, why in self.failed.items()})
        return out

    def get(self, name: str | None, version: str | None = None) -> Served:
        """The served model called ``name`` (default model when None), at ``version`` when one is given.

        Raises UnknownModelError (naming the choices) or ModelUnavailableError (it failed to load)."""
        name = name or self.default_model
        served = self.served.get(name) if name else None
        if served is None:
            if name in self.failed:
                raise ModelUnavailableError(f"model {name!r} is not available: it failed to load ({self.failed[name]})")
            known = ", ".join(sorted(self.served)) or "none"
            raise UnknownModelError(f"unknown model {name!r}; available models: {known} (see GET /models)")
        if version is not None and version != served.model.version:
            raise UnknownModelError(f"model {name!r} has no version {version!r}; available versions: "
                                    f"{served.model.version} (or leave the version out of the path)")
        return served

    def admit(self, name: str | None, version: str | None = None) -> None:
        """Refuse at once what cannot be served now: an unknown model, or a full queue (QueueFullError).

        For the routes to call before they read a body; the batcher owns the queue's rule."""
        self.get(name, version).batcher.admit()

    async def infer(self, name: str | None, x: np.ndarray, timeout_s: float, *, version: str | None = None,
                    since: float | None = None) -> tuple[Served, tuple[np.ndarray, ...]]:
        """(the model that ran, (logits, probabilities)) for float32 pixels [N,1,28,28], through its batcher.

        A request waits at most ``timeout_s`` counted from ``since`` (the event loop's clock when its body
        was in, so time spent waiting to be decoded counts too), or from now; then RequestTimeoutError.
        A model swapped by a reload between lookup and submit runs the request on its replacement."""
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + timeout_s
        while True:
            served = self.get(name, version)
            try:
                return served, await served.batcher.submit(x, deadline)
            except BatcherClosedError:
                if self.served.get(served.model.name) in (None, served):  # closed for good: shutting down
                    raise
            except TimeoutError:
                raise RequestTimeoutError(f"the request waited more than {timeout_s:g} s for model "
                                          f"{served.model.name}; retry later") from None

    async def close(self) -> None:
        """Finish every queued request, then stop the batchers."""
        await asyncio.gather(*(s.batcher.close() for s in self.served.values()))
