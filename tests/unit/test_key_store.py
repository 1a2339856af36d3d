"""The key store (runtime keys in a real Redis): create, use, rotate, revoke; every replica's
copy follows within key_refresh_s; Redis down keeps the last copy; the admin API's checks."""

from __future__ import annotations

import asyncio

import pytest

from sluice.accounting.budgets import BudgetGuard
from sluice.accounting.key_admin import KeyAdmin, key_fields
from sluice.accounting.key_store import KeyStore
from sluice.accounting.rate_limits import meters
from sluice.accounting.tenancy import Authenticator, Principal, key_hash
from sluice.cache_tier.redis_target import async_client
from sluice.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)
from sluice.schema.accounting import ANONYMOUS, ApiKey, AuthConfig, RateLimit

PROFILE_SECRET = "sk-profile-key"
AUTH = AuthConfig(required=True, keys=(
    ApiKey(id="gitops", tenant="acme", sha256=key_hash(PROFILE_SECRET), admin=True),))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _store(url: str, clock: Clock, refresh_s: float = 2.0) -> KeyStore:
    return KeyStore(async_client(url, 1.0), refresh_s, reserved=frozenset({"gitops"}),
                    clock=clock)


async def _who(auth: Authenticator, store: KeyStore, secret: str) -> Principal:
    stored = await store.current()
    return auth.principal(_bearer(secret), stored, store_read=stored is not None)


def test_a_key_created_on_one_replica_is_used_rotated_and_revoked_on_another(
        redis_url: str) -> None:
    async def run() -> None:
        clock = Clock()
        admin_side, serving = _store(redis_url, clock), _store(redis_url, clock)
        auth = Authenticator(AUTH)
        assert (await serving.current()) == {}  # read once: empty
        secret, key = await admin_side.create(
            {"id": "app-1", "tenant": "t1", "models": ["small"], "requests_per_minute": 5})
        assert secret.startswith("sk-sluice-") and key.sha256 == key_hash(secret)
        # the serving replica's copy is fresh: the new key is unknown until it refreshes
        with pytest.raises(Unauthorized):
            await _who(auth, serving, secret)
        clock.now += 2.0
        who = await _who(auth, serving, secret)
        assert (who.key_id, who.tenant, who.models) == ("app-1", "t1", ("small",))
        assert who.rate_limit == RateLimit(scope="key", id="app-1", requests_per_minute=5)

        new_secret, _ = await admin_side.rotate("app-1")
        clock.now += 2.0
        with pytest.raises(Unauthorized):
            await _who(auth, serving, secret)
        assert (await _who(auth, serving, new_secret)).key_id == "app-1"

        await admin_side.revoke("app-1")
        clock.now += 2.0
        with pytest.raises(Unauthorized):
            await _who(auth, serving, new_secret)
        assert await admin_side.list() == []
        # the profile's keys keep working and cannot be changed through the store
        assert (await _who(auth, serving, PROFILE_SECRET)).key_id == "gitops"
        for change in (admin_side.rotate("gitops"), admin_side.revoke("gitops"),
                       admin_side.create({"id": "gitops", "tenant": "x"})):
            with pytest.raises(Conflict):
                await change
        with pytest.raises(NotFound):
            await admin_side.revoke("app-1")
        await admin_side.close()
        await serving.close()

    asyncio.run(run())


def test_a_duplicate_id_is_a_conflict_and_the_secret_is_never_stored(
        redis_url: str) -> None:
    async def run() -> None:
        store = _store(redis_url, Clock())
        secret, _ = await store.create({"id": "k", "tenant": "t"})
        with pytest.raises(Conflict):
            await store.create({"id": "k", "tenant": "other"})
        raw = await store._client.hgetall("sluice:keys")
        assert secret.encode() not in b"".join(raw.values())
        listed = [k.public() for k in await store.list()]
        assert listed and "sha256" not in listed[0]
        await store.close()

    asyncio.run(run())


def test_redis_down_keeps_the_last_copy_and_a_replica_that_never_read_answers_503(
        redis_server) -> None:
    async def run() -> None:
        clock = Clock()
        url = redis_server.url
        writer, reader = _store(url, clock), _store(url, clock)
        fresh = _store(url, clock)
        secret, _ = await writer.create({"id": "k", "tenant": "t"})
        auth = Authenticator(AUTH)
        assert (await _who(auth, reader, secret)).key_id == "k"
        redis_server.stop()
        clock.now += 5.0
        assert (await _who(auth, reader, secret)).key_id == "k"  # the copy it had
        with pytest.raises(Unavailable) as err:  # never read: may be a stored key
            await _who(auth, fresh, secret)
        assert err.value.status == 503 and err.value.code == "key_store_unavailable"
        with pytest.raises(Unavailable):
            await writer.create({"id": "k2", "tenant": "t"})
        for s in (writer, reader, fresh):
            await s.close()

    asyncio.run(run())


def test_concurrent_requests_share_one_read_per_refresh(redis_url: str) -> None:
    async def run() -> None:
        store = _store(redis_url, Clock())
        calls = 0
        real_get = store._client.get

        async def counting_get(*args: object) -> object:
            nonlocal calls
            calls += 1
            return await real_get(*args)

        store._client.get = counting_get
        await asyncio.gather(*(store.current() for _ in range(50)))
        assert calls == 1
        await store.close()

    asyncio.run(run())


def test_a_key_limited_to_some_models_gets_403_for_another() -> None:
    who = Principal("app", "t", models=("small",))
    who.may_use("small")
    with pytest.raises(Forbidden) as err:
        who.may_use("large")
    assert err.value.status == 403 and err.value.param == "model"
    assert err.value.code == "model_not_allowed"
    Principal("any", "t").may_use("large")  # no list: every model


def test_a_stored_keys_own_limit_and_budget_apply() -> None:
    own = RateLimit(scope="key", id="app", requests_per_minute=3)
    profile_default = (RateLimit(scope="key", id="*", requests_per_minute=100),)
    ms = meters(profile_default, Principal("app", "t", rate_limit=own), tokens=10)
    assert [(m.key, m.limit) for m in ms] == [("sluice:rl:key:app:requests", 3)]
    from sluice.schema.accounting import StoredKey

    key = StoredKey(id="app", tenant="t", sha256="0" * 64, daily_usd=0.5)
    guard = BudgetGuard((), read=lambda keys: asyncio.sleep(0, [None] * len(keys)),
                        key_budgets=lambda: [key.budget()])
    budgets = guard.applicable(Principal("app", "t"))
    assert [(b.scope, b.id, b.daily_usd) for b in budgets] == [("key", "app", 0.5)]


def test_admin_operations_need_an_admin_key_and_name_bad_fields() -> None:
    admin = KeyAdmin(None)

    async def run() -> None:
        with pytest.raises(Unauthorized):
            await admin.list(Principal(ANONYMOUS, "default"))
        with pytest.raises(Forbidden):
            await admin.list(Principal("app", "t"))
        with pytest.raises(NotFound):  # an admin, but no store configured
            await admin.list(Principal("ops", "t", admin=True))

    asyncio.run(run())
    for body, param in ((b'{"id": "x", "tenant": "t", "sha256": "ab"}', "sha256"),
                        (b'{"id": "bad id!", "tenant": "t"}', "id"),
                        (b'{"id": "x", "tenant": "t", "requests_per_minute": 0}',
                         "requests_per_minute")):
        with pytest.raises(InvalidRequest) as err:
            key_fields(body)
        assert err.value.param == param
    for body in (b"[1]", b"\xff", b"{"):
        with pytest.raises(InvalidRequest):
            key_fields(body)
