"""API keys, tenants and request tags: who a request is attributed to, and its cost tags."""

import pytest
from pydantic import ValidationError

from sluice.accounting.tenancy import (
    DEFAULT_TENANT,
    TAGS_HEADER,
    Authenticator,
    Principal,
    Unauthorized,
    key_hash,
)
from sluice.errors import InvalidRequest
from sluice.schema.accounting import ANONYMOUS, ApiKey, AuthConfig

SECRET, ADMIN_SECRET = "sk-team-search-123", "sk-ops-admin-456"


def _auth(required: bool = False, max_tags: int = 8) -> Authenticator:
    keys = (ApiKey(id="search-prod", tenant="search", sha256=key_hash(SECRET)),
            ApiKey(id="ops", tenant="platform", sha256=key_hash(ADMIN_SECRET), admin=True))
    return Authenticator(AuthConfig(required=required, keys=keys, max_tags=max_tags))


def test_key_hash_is_the_hex_sha256_of_the_secret() -> None:
    import hashlib

    assert key_hash(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()
    assert len(key_hash("x")) == 64


def test_a_known_key_is_its_principal_with_tenant_and_admin_flag() -> None:
    auth = _auth()
    assert auth.principal({"authorization": f"Bearer {SECRET}"}) == Principal(
        "search-prod", "search", False)
    assert auth.principal({"authorization": f"Bearer {ADMIN_SECRET}"}) == Principal(
        "ops", "platform", True)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert _auth(required=True).principal(
        {"authorization": f"{scheme} {SECRET}"}).key_id == "search-prod"


def test_whitespace_around_the_secret_is_ignored() -> None:
    assert _auth(required=True).principal(
        {"authorization": f"Bearer   {SECRET}  "}).key_id == "search-prod"


@pytest.mark.parametrize("headers", [
    {},
    {"authorization": ""},
    {"authorization": "Bearer sk-not-a-key"},
    {"authorization": "Bearer "},
    {"authorization": f"Basic {SECRET}"},
    {"authorization": SECRET},
])
def test_unknown_or_missing_key_is_anonymous_when_not_required(headers: dict) -> None:
    p = _auth(required=False).principal(headers)
    assert p == Principal(ANONYMOUS, DEFAULT_TENANT, False)
    assert (p.key_id, p.tenant) == ("anonymous", "default")


@pytest.mark.parametrize("headers", [
    {},
    {"authorization": "Bearer sk-not-a-key"},
    {"authorization": "Bearer "},
    {"authorization": f"Token {SECRET}"},
])
def test_unknown_or_missing_key_is_401_when_required(headers: dict) -> None:
    with pytest.raises(Unauthorized) as err:
        _auth(required=True).principal(headers)
    assert err.value.status == 401
    assert err.value.code == "invalid_api_key"
    assert err.value.type == "invalid_request_error"
    assert "Bearer" in err.value.message
    assert err.value.body()["error"]["code"] == "invalid_api_key"


def test_no_tags_header_means_no_tags() -> None:
    auth = _auth()
    assert auth.tags({}) == ()
    assert auth.tags({TAGS_HEADER: ""}) == ()
    assert auth.tags({TAGS_HEADER: " , ,, "}) == ()


def test_tags_are_split_stripped_and_deduplicated_in_order() -> None:
    tags = _auth().tags({TAGS_HEADER: " team-search , feature:summary,team-search,,v=2 ,a.b_c"})
    assert tags == ("team-search", "feature:summary", "v=2", "a.b_c")


@pytest.mark.parametrize("bad", ["team search", "tag/1", "naïve", "x" * 65, "a;b", "é"])
def test_a_tag_with_invalid_characters_or_length_is_a_400_naming_the_header(bad: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _auth().tags({TAGS_HEADER: f"ok,{bad}"})
    assert err.value.status == 400
    assert err.value.param == TAGS_HEADER
    assert TAGS_HEADER in err.value.message


def test_a_64_character_tag_is_allowed() -> None:
    assert _auth().tags({TAGS_HEADER: "x" * 64}) == ("x" * 64,)


def test_more_tags_than_max_tags_is_a_400_but_exactly_max_is_fine() -> None:
    auth = _auth(max_tags=3)
    assert auth.tags({TAGS_HEADER: "a,b,c"}) == ("a", "b", "c")
    assert auth.tags({TAGS_HEADER: "a,b,c,a,b"}) == ("a", "b", "c")  # duplicates do not count
    with pytest.raises(InvalidRequest) as err:
        auth.tags({TAGS_HEADER: "a,b,c,d"})
    assert err.value.status == 400 and err.value.param == TAGS_HEADER
    assert "4 tags" in err.value.message and "at most 3" in err.value.message


def test_max_tags_zero_refuses_any_tag() -> None:
    auth = _auth(max_tags=0)
    assert auth.tags({}) == ()
    with pytest.raises(InvalidRequest):
        auth.tags({TAGS_HEADER: "a"})


def test_config_rejects_duplicate_key_ids() -> None:
    keys = [{"id": "k", "tenant": "t", "sha256": key_hash("a")},
            {"id": "k", "tenant": "u", "sha256": key_hash("b")}]
    with pytest.raises(ValidationError, match="duplicate id"):
        AuthConfig.model_validate({"keys": keys})


def test_config_rejects_duplicate_secrets() -> None:
    keys = [{"id": "k1", "tenant": "t", "sha256": key_hash("a")},
            {"id": "k2", "tenant": "t", "sha256": key_hash("a")}]
    with pytest.raises(ValidationError, match="duplicate sha256"):
        AuthConfig.model_validate({"keys": keys})


def test_config_required_needs_at_least_one_key() -> None:
    with pytest.raises(ValidationError, match="at least one key"):
        AuthConfig(required=True)
    assert AuthConfig().required is False


def test_config_reserves_the_anonymous_id() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        AuthConfig.model_validate(
            {"keys": [{"id": "anonymous", "tenant": "t", "sha256": key_hash("a")}]})


@pytest.mark.parametrize("field, value", [
    ("id", "has space"), ("tenant", "a/b"), ("sha256", "ABC"), ("sha256", key_hash("a")[:-1]),
])
def test_config_validates_key_fields(field: str, value: str) -> None:
    key = {"id": "k", "tenant": "t", "sha256": key_hash("a")} | {field: value}
    with pytest.raises(ValidationError):
        ApiKey.model_validate(key)


def test_config_rejects_unknown_fields_and_negative_max_tags() -> None:
    with pytest.raises(ValidationError):
        AuthConfig.model_validate({"requird": True})
    with pytest.raises(ValidationError):
        AuthConfig(max_tags=-1)


def test_keys_new_prints_a_secret_and_an_entry_that_accepts_it(capsys) -> None:
    import yaml

    from sluice.cli import main

    assert main(["keys", "new", "--id", "my-app", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    secret = out.split("(it is not stored anywhere): ")[1].split()[0]
    (entry,) = yaml.safe_load(out)
    assert entry["id"] == "my-app" and entry["tenant"] == "acme" and secret not in str(entry)
    auth = Authenticator(AuthConfig(required=True, keys=(ApiKey(**entry),)))
    assert auth.principal({"authorization": f"Bearer {secret}"}).tenant == "acme"
