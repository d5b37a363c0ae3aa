"""Remote scoring: batches POSTed to a running `digits serve`, a bounded number at a time, with retries.

What is sent:
- IDX and CSV images are MNIST-style already: they go as one KServe v2 binary tensor
  (``POST /v2/models/{name}/infer``: a JSON header, then the uint8 pixels as raw bytes;
  the probabilities come back as raw float32 bytes). Neither side parses a number as
  text; 256-image requests to the JSON ``{"pixels": ...}`` route of /predict were about
  three times slower when measured here, the difference spent writing and reading numbers.
- Image files go as they are, as multipart ``file`` fields of ``POST /predict``: the service
  decodes them with the same preprocessing module as local mode, the client needs no
  decoding work, and a PNG digit is a few hundred bytes.
Both routes go through the service's batcher, and answer 503/504 the same way.

The service refuses a whole request when one image in it is bad (422) or when the request
is too large for it (413); the batch is then split in halves until the bad image stands
alone, so each bad input is reported with the service's reason and the others are scored.

503 (queue full) and 504 (timed out) are transient: the request is retried after an
exponential backoff with jitter, or after the ``Retry-After`` the service sent when that is
longer, at most ``retries`` times per request and ``budget`` times in the whole run; so are
dropped connections. Any other error stops the run with the service's message.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
import numpy as np
import orjson

from clients.batches import Batch, InputError, Scored
from clients.pipeline import ordered_map
from core import v2codec
from core.contract import IMAGE_SHAPE, INPUT_NAME
from core.v2codec import HEADER_LENGTH

RETRIABLE = frozenset({503, 504})
SPLITTABLE = frozenset({413, 422})  # the request as a whole was refused because of one image or its size


class RemoteError(Exception):
    """The service cannot be used (unreachable, overloaded, or it refused a request); the message says why."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # retries of one request
    budget: int = 100  # retries in the whole run
    base_s: float = 0.25  # first backoff; doubles with each retry of a request
    cap_s: float = 30.0  # longest wait, Retry-After included

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): backoff with jitter, at least Retry-After."""
        backoff = self.base_s * 2**attempt * random.uniform(0.5, 1.0)
        return min(self.cap_s, max(backoff, retry_after or 0.0))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds (decimals accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _predict_answer(response: httpx.Response) -> np.ndarray:
    """POST /predict's answer -> probabilities float32 [n, C]."""
    predictions = orjson.loads(response.content).get("predictions", [])
    return np.asarray([p["probabilities"] for p in predictions], np.float32).reshape(len(predictions), -1)


def _infer_answer(response: httpx.Response) -> np.ndarray:
    """A v2 infer answer (JSON header + binary float32 output, or plain JSON) -> probabilities float32 [n, C]."""
    return v2codec.decode_output(response.content, response.headers.get(HEADER_LENGTH), "probabilities")


def _detail(response: httpx.Response) -> str:
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200] or response.reason_phrase
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("error") or doc)
    return str(doc)[:200]


class RemoteScorer:
    """Scores batches with a running service; ``map`` keeps ``concurrency`` requests in flight, in order."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 2,
        timeout_s: float = 60.0,
        policy: RetryPolicy | None = None,
        api_key: str | None = None,
        on_retry: Callable[[str], None] = lambda message: None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.url = url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry
        self.retried = 0  # retries so far, the whole run
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._failure: str | None = None  # why the run gave up, once it has
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.params = {"model": model} if model else {}
        self.model_name = model or ""  # the service's name for it, once ``describe`` has asked

    # ------------------------------------------------------------------ the model

    def describe(self) -> tuple[str, str, list[str]]:
        """(name, version, labels) of the model the service will use, from GET /models."""
        try:
            response = self.client.get("/models")
        except httpx.TransportError as exc:
            raise RemoteError(
                f"cannot reach the service at {self.url} ({type(exc).__name__}: {exc}); start it with "
                "`digits serve` or check --url"
            ) from None
        if response.status_code != 200:
            raise RemoteError(f"{self.url}/models answered HTTP {response.status_code}: {_detail(response)}")
        doc = response.json()
        wanted = self.model or doc.get("default_model")
        for entry in doc.get("models", []):
            if entry.get("name") == wanted:
                self.model_name = str(entry["name"])
                return self.model_name, str(entry.get("version", "")), [str(x) for x in entry["labels"]]
        served = ", ".join(str(m.get("name")) for m in doc.get("models", [])) or "none"
        raise RemoteError(f"the service at {self.url} does not serve model {wanted!r}; it serves: {served}")

    # ------------------------------------------------------------------ scoring

    def prepare(self, batch: Batch) -> Batch:
        """Nothing to do ahead: pixels go as uint8 JSON, image files as they are."""
        return batch

    def map(self, batches: Iterable[Batch]) -> Iterator[Scored]:
        """Score every batch, ``concurrency`` requests at a time, results in input order."""
        if not self.model_name:
            self.describe()  # the v2 route names the model
        self._closing.clear()
        self._failure = None
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="digits-remote")
        try:
            # 2x: the next requests are ready the moment one finishes, memory still bounded
            yield from ordered_map(lambda b: pool.submit(self.score, b), batches, window=2 * self.concurrency)
        finally:
            self._closing.set()  # retries still waiting give up at once
            pool.shutdown(wait=True, cancel_futures=True)

    def score(self, batch: Batch) -> Scored:
        kept: list[np.ndarray] = []
        probabilities: list[np.ndarray] = []
        errors = list(batch.errors)
        if len(batch):
            self._score(batch, np.arange(len(batch)), kept, probabilities, errors)
        if not kept:
            return Scored(batch.select(np.empty(0, np.int64)), np.empty((0, 0), np.float32), errors)
        keep = np.concatenate(kept)
        return Scored(batch.select(keep), np.concatenate(probabilities), errors)

    def _score(
        self, batch: Batch, items: np.ndarray, kept: list[np.ndarray], out: list[np.ndarray],
        errors: list[InputError],
    ) -> None:
        """Score ``batch``'s items at ``items`` (int [k]); a refused request is split to find the bad item."""
        files = batch.blobs is not None
        path = "/predict" if files else f"/v2/models/{self.model_name}/infer"
        response = self._post(path, self._files_body(batch, items) if files else self._tensor_body(batch, items))
        if response.status_code == 200:
            probabilities = _predict_answer(response) if files else _infer_answer(response)
            if len(probabilities) != len(items):
                raise RemoteError(f"{self.url}{path} returned {len(probabilities)} results for {len(items)} images")
            kept.append(items)
            out.append(probabilities)
            return
        detail = _detail(response)
        if response.status_code in SPLITTABLE and len(items) > 1:
            half = len(items) // 2
            self._score(batch, items[:half], kept, out, errors)
            self._score(batch, items[half:], kept, out, errors)
            return
        if response.status_code in SPLITTABLE:
            name = batch.names[int(items[0])]
            errors.append(InputError(name, f"the service refused it (HTTP {response.status_code}): {detail}"))
            return
        raise RemoteError(f"{self.url}{path} answered HTTP {response.status_code}: {detail}")

    def read(self, name: str, data: bytes) -> tuple[dict[str, Any] | None, str]:
        """POST /read one image file -> (its reading, ""), or (None, why the service refused it)."""
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = self._post("/read", {"files": [("file", (os.path.basename(name), data, kind))]})
        if response.status_code == 200:
            return response.json()["readings"][0], ""
        if response.status_code in SPLITTABLE:
            return None, f"the service refused it (HTTP {response.status_code}): {_detail(response)}"
        raise RemoteError(f"{self.url}/read answered HTTP {response.status_code}: {_detail(response)}")

    @staticmethod
    def _files_body(batch: Batch, items: np.ndarray) -> dict[str, Any]:
        """Image files as multipart ``file`` fields, for POST /predict."""
        assert batch.blobs is not None
        files = []
        for i in items.tolist():
            name = os.path.basename(batch.names[i])
            files.append(("file", (name, batch.blobs[i], mimetypes.guess_type(name)[0] or "application/octet-stream")))
        return {"files": files}

    @staticmethod
    def _tensor_body(batch: Batch, items: np.ndarray) -> dict[str, Any]:
        """MNIST-style pixels as a v2 binary tensor: a JSON header, then the raw bytes."""
        if batch.pixels is None:
            raise ValueError("a batch without pixels or image files cannot be scored")
        pixels = batch.pixels if len(items) == len(batch) else batch.pixels[items]
        content, length = v2codec.encode_request(INPUT_NAME, pixels, (len(pixels), *IMAGE_SHAPE), ["probabilities"])
        return {
            "content": content,
            "headers": {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(length)},
        }

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST to the service; 503, 504 and dropped connections are retried (see the module docstring)."""
        attempt = 0
        while True:
            if self._closing.is_set():
                raise self._stopped()
            retry_after = None
            try:
                response = self.client.post(path, params=self.params if path in ("/predict", "/read") else None, **body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRIABLE:
                    return response
                problem = f"HTTP {response.status_code}: {_detail(response)}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if self._closing.is_set():
                raise self._stopped()
            if attempt >= self.policy.retries or not self._take_retry():
                limit = (f"{self.policy.retries} retries of this request" if attempt >= self.policy.retries
                         else f"the run's {self.policy.budget} retries")
                self._give_up(
                    f"{self.url}{path}: {problem}; gave up after {limit}. The service is overloaded or "
                    "down: lower --concurrency or --batch-size, raise --retries, or add replicas"
                )
            delay = self.policy.delay(attempt, retry_after)
            why = f", Retry-After {retry_after:g} s" if retry_after is not None else ""
            self.on_retry(f"{problem}; retry {attempt + 1} of {self.policy.retries} in {delay:.2f} s{why}")
            attempt += 1
            if self._closing.wait(delay):
                raise self._stopped()

    def _give_up(self, message: str) -> NoReturn:
        """Stop the whole run: requests in other threads stop too and report this same reason."""
        with self._lock:
            if self._failure is None:
                self._failure = message
        self._closing.set()
        raise RemoteError(message)

    def _stopped(self) -> RemoteError:
        return RemoteError(self._failure or f"{self.url}: the run was stopped")

    def _take_retry(self) -> bool:
        with self._lock:
            if self.retried >= self.policy.budget:
                return False
            self.retried += 1
            return True

    def close(self) -> None:
        self._closing.set()
        self.client.close()
