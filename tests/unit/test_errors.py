from sluice.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
    from_engine_error,
)


def test_error_body_has_openai_shape() -> None:
    body = ModelNotFound("nope", param="model").body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "model_not_found"


def test_unavailable_is_503_with_retry_after() -> None:
    err = Unavailable("down", retry_after_s=7)
    assert err.status == 503 and err.headers["Retry-After"] == "7"


def test_engine_context_error_maps_to_context_length_exceeded() -> None:
    msg = ("This model's maximum context length is 2048 tokens. However, your request has "
           "3000 input tokens. Please reduce the length of the input messages.")
    err = from_engine_error(400, msg, "BadRequestError")
    assert isinstance(err, ContextLengthExceeded) and err.status == 400
    assert "2048" in err.message and "3000" in err.message


def test_engine_client_errors_keep_their_status() -> None:
    err = from_engine_error(422, "bad thing", "BadRequestError", "stop")
    assert isinstance(err, InvalidRequest) and err.status == 422 and err.param == "stop"


def test_engine_503_stays_retriable() -> None:
    assert isinstance(from_engine_error(503, "overloaded"), Unavailable)


def test_a_bug_is_a_500_with_the_request_id_never_a_retriable_503() -> None:
    from fastapi.testclient import TestClient

    from sluice.deployments.http import create_app

    app = create_app()

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a programming error")

    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/boom", headers={"x-request-id": "req-bug-1"})
    assert resp.status_code == 500 and "retry-after" not in resp.headers
    error = resp.json()["error"]
    assert error["type"] == "internal_error" and error["code"] == "internal_error"
    assert "KeyError" in error["message"] and "req-bug-1" in error["message"]
    assert "not something to retry" in error["message"]


def test_a_bug_s_500_names_the_ingress_replica_like_every_other_response() -> None:
    """Starlette sends the last-resort 500 from outside the middleware that names the
    replica: the chaos run's 500s had no x-sluice-ingress."""
    from fastapi.testclient import TestClient

    from sluice.deployments.http import create_app
    from sluice.deployments.ingress import _IngressName

    app = create_app()
    app.add_middleware(_IngressName)

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a programming error")

    @app.get("/fine")
    async def fine() -> dict[str, str]:
        return {}

    with TestClient(app, raise_server_exceptions=False) as client:
        bug, ok = client.get("/boom"), client.get("/fine")
    assert bug.status_code == 500 and bug.headers["x-sluice-ingress"] == "local"
    assert ok.headers["x-sluice-ingress"] == "local"


def test_a_dead_engine_reported_as_500_is_retriable() -> None:
    err = from_engine_error(500, "EngineCore encountered an issue. See stack trace (above) "
                            "for the root cause.", "InternalServerError")
    assert isinstance(err, Unavailable) and err.status == 503
    assert not isinstance(from_engine_error(500, "some other failure"), Unavailable)


def test_max_tokens_above_the_engines_context_is_context_length_exceeded() -> None:
    """vLLM's wording for it; a cascade escalates on this error class."""
    msg = ("max_tokens=3000 cannot be greater than max_model_len=2048. Please request fewer "
           "output tokens.")
    err = from_engine_error(400, msg, "BadRequestError", "max_tokens")
    assert isinstance(err, ContextLengthExceeded) and err.param == "max_tokens"
