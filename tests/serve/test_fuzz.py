"""A bounded schema fuzz of the server's own OpenAPI document (schemathesis), over real HTTP on loopback.

Fixed seed (derandomize) and a fixed number of examples per mode: schema-valid requests (positive) and
schema-violating ones (negative), to every operation. It must find no 500 and no status code the
document does not list.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from scratchllm.serve.config import ServeConfig

from scratchllm.serve.server import create_app

from .conftest import tiny_model

schemathesis = pytest.importorskip("schemathesis")

KEY = "sk-fuzz"
# Examples per generation mode, across all operations: a short run in the default suite, a longer one in slow.
QUICK, LONG = 10, 300


@pytest.fixture(scope="module")
def fuzz_server(byte_tokenizer, loopback_server):
    torch.set_num_threads(1)
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    cfg = ServeConfig(model_name="tiny", api_key=KEY, max_pending=4, timeout_s=30)
    srv = loopback_server(create_app(cfg, model, byte_tokenizer))
    yield srv
    srv.stop()


@pytest.mark.parametrize("examples", [QUICK, pytest.param(LONG, marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schema_fuzz_finds_no_500_and_no_undocumented_status(fuzz_server, mode, examples):
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import status_code_conformance

    doc = httpx.get(fuzz_server.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    seen: dict[int, int] = {}

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(GenerationMode(mode)))
    def fuzz(case):
        if mode == "positive" and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "tiny"  # the served name, so sampling values reach the engine, not a 404
        response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    fuzz()
    assert sum(seen.values()) >= examples // 2, seen  # the fuzz really ran
    assert 500 not in seen, seen
    if mode == "positive":
        assert seen.get(200, 0) >= 3, seen  # requests did reach generation
