"""The OpenAPI document states what the server enforces, and schemathesis (``--checks all``) finds
nothing against a live server with auth off and on (a quick run; ``benchmarks/reliability.py``
is the long one)."""

from __future__ import annotations

import httpx

from benchmarks.reliability import KEYS, run_schemathesis, server_errors


def test_the_document_states_the_servers_rules(keyed_server):
    doc = httpx.get(keyed_server.base + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    request = schemas["AttributionRequest"]
    assert request["properties"]["top_k"]["maximum"] == 100 and request["properties"]["top_k"]["type"] == "integer"
    assert len(request["oneOf"]) == 2  # prompt + response, or messages
    body = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/BatchCreateRequest"
    assert {"application/jsonl", "application/x-ndjson"} <= set(body)
    assert doc["paths"]["/v1/examples/{example_id}"]["get"]["parameters"][0]["schema"]["maximum"] == 2**63 - 1
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/") and not path.startswith("/v1/admin/"):  # admin routes take admin keys
                assert "401" in operation["responses"], (method, path)
                assert operation["security"] == [{"bearer": []}], (method, path)


def test_schemathesis_finds_nothing_with_auth_off(open_server):
    run, out = run_schemathesis(open_server.base, None, max_examples=4, phases="fuzzing,stateful", max_time=45)
    assert run.exit_code == 0 and not run.failures and not run.errors, out[-6000:]
    assert run.cases >= 40
    assert server_errors(open_server.base) == 0


def test_schemathesis_finds_nothing_with_auth_on(keyed_server):
    run, out = run_schemathesis(keyed_server.base, KEYS[0], max_examples=4, phases="fuzzing,stateful", max_time=45)
    assert run.exit_code == 0 and not run.failures and not run.errors, out[-6000:]
    assert run.cases >= 40
    assert server_errors(keyed_server.base) == 0
