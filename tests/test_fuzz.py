"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis, in process).

Every operation the document lists (with an API key set, so the model repository is there too) gets
requests generated from its schemas, valid and invalid ones, from a fixed seed. Each answer must not
be a server error, must use a documented status code and content type, and must match the documented
schema; an operation documented as needing the key must refuse requests without it or with a wrong one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings

KEY = "fuzz-key"
MAX_EXAMPLES = 60  # per operation and generation phase; operations without inputs need far fewer
MIN_REQUESTS = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          ignored_auth]

SENT: Counter[str] = Counter()  # operation -> requests sent (the checks' own probes come on top)


MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# Small limits, so generated bodies reach them (413) and inference stays cheap. Building the app loads
# nothing: the models load when the first request starts its lifespan.
APP = create_app(Settings(models_dir=MODELS_DIR, api_key=KEY, max_images_per_request=8, max_queue=64,
                          max_body_bytes=256 * 1024))
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # requests go to the app in process (as schemathesis.openapi.from_asgi does)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    yield
    shutdown_lifespans()  # the app's lifespan: batchers drained and closed


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_generated_request_gets_a_documented_non_5xx_answer(case: schemathesis.Case) -> None:
    SENT[case.operation.label] += 1
    case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)


def test_the_fuzzing_covered_every_operation_with_enough_requests() -> None:
    if not SENT:
        pytest.skip("the fuzzing test did not run (deselected)")
    print(f"{sum(SENT.values())} generated requests: {dict(SENT.most_common())}")
    assert sum(SENT.values()) >= MIN_REQUESTS, SENT
    for operation in ("POST /predict", "POST /v2/models/{model_name}/infer", "GET /v2/models/{model_name}",
                      "POST /v2/repository/models/{name}/load", "GET /metrics", "GET /healthz"):
        assert SENT[operation] >= 1, (operation, SENT)
    assert len(SENT) >= 17, sorted(SENT)
