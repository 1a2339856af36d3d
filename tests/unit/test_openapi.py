"""The OpenAPI document and Swagger UI the ingress serves, and its 405s: the real ingress
app in-process (no Ray cluster; engine handles that are never called)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from sluice.accounting.tenancy import TAGS_HEADER, Authenticator
from sluice.deployments import ingress
from sluice.deployments.openapi import tags_pattern
from sluice.errors import InvalidRequest
from sluice.pipeline.request import RequestLimits, parse_request
from sluice.router.static import StaticRouter
from sluice.schema.accounting import AuthConfig
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
INFERENCE = {"/v1/chat/completions": "ChatCompletionRequest",
             "/v1/completions": "CompletionRequest"}


class _Handle:
    """A deployment handle's shape, as far as building the ingress goes."""

    def options(self, **_: Any) -> _Handle:
        return self


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The ingress's own app and routes, served by an ingress object built as Serve builds
    it (its constructor), handed to the routes as Serve's replica context would."""
    served = ingress.SluiceIngress.func_or_class
    # (Serve awaits the ingress's async __del__ at shutdown; nothing would here)
    instance = object.__new__(type("Ingress", (served,), {"__del__": lambda self: None}))
    user_class = served.__mro__[1]  # the class under Serve's ASGI wrapper
    user_class.__init__(instance, CONFIG, {"small": _Handle(), "large": _Handle()}, None)
    app = ingress.app
    for route in app.routes:
        for dep in getattr(getattr(route, "dependant", None), "dependencies", ()):
            if dep.call.__name__ == "get_current_servable_instance":
                app.dependency_overrides[dep.call] = lambda: instance
    with TestClient(app) as test_client:
        yield test_client
    app.dependency_overrides.clear()


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_the_inference_routes_document_their_bodies_answers_and_errors(doc) -> None:
    routes = CONFIG.routing.routes if CONFIG.routing else ()
    selections = CONFIG.routing.selections if CONFIG.routing else ()
    served = StaticRouter(CONFIG.catalog, CONFIG.profile.ingress.auto_route, routes,
                          selections).model_ids
    assert "cheapest" in served  # the shipped selection route
    limits = CONFIG.profile.ingress
    for path, body in INFERENCE.items():
        op = doc["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert ref.endswith(body) and schema["properties"]["model"]["enum"] == served
        assert schema["additionalProperties"] is False
        n = schema["properties"]["n"]
        assert limits.max_n in (n.get("maximum"), *(a.get("maximum") for a in n.get("anyOf", ())))
        assert {"200", "400", "403", "404", "408", "413", "429", "500", "503"} <= set(
            op["responses"])
        ok = op["responses"]["200"]
        assert {"application/json", "text/event-stream"} <= set(ok["content"])
        assert ok["headers"]["x-sluice-model"]["required"] is True
        assert {"x-sluice-route", "x-sluice-cache", "x-sluice-cost-usd",
                "x-ratelimit-remaining-tokens", "x-request-id"} <= set(ok["headers"])
        assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        error = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
        assert error.endswith("/ErrorBody")
        assert op["security"] == [{}, {"bearerAuth": []}]  # auth.required is false here
        headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
        assert {"x-sluice-tags", "x-request-id", "cache-control", "x-sluice-cache"} <= set(
            headers)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http",
        "scheme": "bearer"}
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


def test_every_route_is_documented_with_what_it_answers(doc) -> None:
    for path in ("/v1/models", "/v1/models/{model_id}", "/v1/usage", "/v1/routing/stats",
                 "/v1/cache/stats", "/healthz", "/readyz", "/metrics", "/metrics/targets"):
        op = doc["paths"][path]["get"]
        assert "200" in op["responses"] and "422" not in op["responses"], path
    assert doc["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]["Retry-After"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    targets = doc["paths"]["/metrics/targets"]["get"]["responses"]  # Prometheus' HTTP SD
    assert {"200", "404", "500", "503"} <= set(targets) and "422" not in targets
    assert targets["503"]["headers"]["Retry-After"]["required"] is True
    sd = jsonschema.Draft202012Validator(
        targets["200"]["content"]["application/json"]["schema"])
    assert sd.is_valid([{"targets": ["10.0.0.1:41234"], "labels": {"job": "sluice-ingress"}}])
    assert not sd.is_valid({"targets": []}) and not sd.is_valid([{"targets": ["a"]}])
    for path, item in doc["paths"].items():  # key management, where the app has it
        for op in item.values() if path.startswith("/v1/admin/keys") else ():
            assert op["security"] == [{"bearerAuth": []}]
            assert {"401", "403"} <= set(op["responses"])
    # rollouts: an admin key only where keys are required (this app's profile: not), so a
    # request without one is documented as accepted (Schemathesis's ignored_auth check)
    rollouts = [op for path, item in doc["paths"].items()
                if path.startswith("/v1/admin/rollouts") for op in item.values()]
    assert len(rollouts) == 4
    for op in rollouts:
        assert op["security"] == [{}, {"bearerAuth": []}]
        assert "403" in op["responses"] and "401" not in op["responses"]


def test_bodies_valid_by_the_document_parse_and_invalid_ones_are_400s(doc) -> None:
    limits = RequestLimits(CONFIG.profile.ingress.max_n, CONFIG.profile.ingress.max_tokens_limit)
    chat = _validator(doc, "ChatCompletionRequest")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "6 x 7?"}]},
                {"role": "assistant", "content": None}]
    good = [{"model": "small", "messages": messages, "max_tokens": 4, "stream": True,
             "stream_options": {"include_usage": True}, "stop": ["\n"], "seed": 3},
            {"model": "auto", "messages": messages[1:2], "temperature": 0, "n": 1}]
    bad = [{"model": "small", "messages": messages, "stream_options": {"include_usage": True}},
           {"model": "small", "messages": messages, "temperature": 0, "n": 2},
           {"model": "small", "messages": [{"role": "user", "content": None}]},
           {"model": "small", "messages": messages, "stream": 1},
           {"model": "small", "messages": messages, "max_tokens": 3000},  # small: 2048
           {"model": "small", "messages": messages, "frobnicate": True}]
    for body in good:
        assert chat.is_valid(body), body
        parse_request("chat", body, limits)
    for body in bad:
        assert not chat.is_valid(body), body
    for body in bad[2:4] + bad[5:]:  # (the others are refused by vLLM and the handler)
        with pytest.raises(InvalidRequest):
            parse_request("chat", body, limits)
    completion = _validator(doc, "CompletionRequest")
    assert completion.is_valid({"model": "large", "prompt": [[1, 2], [3]], "max_tokens": 8})
    assert not completion.is_valid({"model": "large", "prompt": [[True]]})


def test_a_rollouts_body_is_documented_and_what_it_lets_through_is_judged_by_the_platform(
        doc, client) -> None:
    """The document states RolloutSpec, its models are the catalog's (not its variants), and
    a body valid by it is refused only for what the platform lacks (404), never as a 400."""
    spec = doc["paths"]["/v1/admin/rollouts"]["post"]
    assert spec["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RolloutSpec"}
    assert {"400", "404", "409", "413"} <= set(spec["responses"])
    rollout = _validator(doc, "RolloutSpec")
    assert (doc["components"]["schemas"]["RolloutSpec"]["properties"]["model"]["enum"]
            == [m.name for m in CONFIG.catalog.models if "@" not in m.name]
            + [r.name for r in CONFIG.routing.routes if "@" not in r.name])  # (`auto`)
    good = {"model": "small", "to": "v2", "steps": [10, 100], "step_s": 60,
            "gates": {"min_requests": 50, "min_agreement": 0.8}}
    assert rollout.is_valid(good)
    for bad in ({**good, "model": "small@v2"}, {**good, "steps": [0, 100]},
                {**good, "steps": [100]}, {**good, "kind": "blue-green"},
                {**good, "gates": {"confidence": 1}}, {**good, "extra": 1}):
        assert not rollout.is_valid(bad), bad
    # (this app has no Redis: a body judged good would be a 503)
    answer = client.post("/v1/admin/rollouts", json={**good, "to": "v9"})
    assert answer.status_code == 404 and "no variant 'small@v9'" in answer.text, answer.text
    answer = client.post("/v1/admin/rollouts", json={**good, "steps": [50, 10, 100]})
    assert answer.status_code == 400 and "steps rise strictly" in answer.text, answer.text
    answer = client.post("/v1/admin/rollouts", content=b"{" + b" " * 20_000 + b"}")
    assert answer.status_code == 413, answer.text


@pytest.mark.parametrize("value", [
    "", "a", "team-search,feature:x=1", "a, b ,c", ",a,,b,", "a,b,c,d,e,f,g,h",
    "a,b,c,d,e,f,g,h,i", "a b", "a;b", "a\u00a0", "x" * 64, "x" * 65, "\t a"])
def test_the_tags_pattern_is_what_the_authenticator_takes(value: str) -> None:
    auth = Authenticator(AuthConfig(max_tags=8))
    try:
        auth.tags({TAGS_HEADER: value})
        taken = True
    except InvalidRequest:
        taken = False
    assert bool(re.fullmatch(tags_pattern(8), value)) == taken


def test_swagger_ui_is_served(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "/openapi.json" in page.text


def test_a_wrong_method_is_a_405_naming_every_method_the_path_takes(client) -> None:
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert client.put("/v1/models").headers["allow"] == "GET"


def test_without_a_metrics_port_the_targets_route_answers_its_documented_404(client,
                                                                             doc) -> None:
    response = client.get("/metrics/targets")  # local-cpu: one replica, no metrics_port
    assert response.status_code == 404
    assert _validator(doc, "ErrorBody").is_valid(response.json())
    assert "metrics_port" in response.json()["error"]["message"]


def test_the_prompt_header_is_a_chats_with_the_pattern_the_stage_takes(doc, client) -> None:
    """`x-sluice-prompt` is documented on chat only (a completion with it is a 400, so a
    client the document guides never sends it there), with the stage's own pattern; a name
    on the pattern that the profile lacks is a documented 404, off it a 400."""
    from sluice.pipeline.prompt_stage import PATTERN

    def headers(path: str) -> dict[str, Any]:
        return {p["name"]: p for p in doc["paths"][path]["post"]["parameters"]
                if p["in"] == "header"}

    assert headers("/v1/chat/completions")["x-sluice-prompt"]["schema"]["pattern"] == PATTERN
    assert "x-sluice-prompt" not in headers("/v1/completions")
    chat_ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["headers"]
    assert "x-sluice-prompt-variant" in chat_ok
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = client.post("/v1/chat/completions", json=body, headers={"x-sluice-prompt": "nope"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "prompt_not_found"
    answer = client.post("/v1/chat/completions", json=body, headers={"x-sluice-prompt": "No!"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "x-sluice-prompt"
    answer = client.post("/v1/completions", headers={"x-sluice-prompt": "nope"},
                         json={"model": "small", "prompt": "hi", "max_tokens": 2})
    assert answer.status_code == 400 and "apply to chat" in answer.json()["error"]["message"]
