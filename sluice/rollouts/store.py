"""Rollouts in Redis: every ingress replica reads the same state, and a restarted one
continues where the fleet is.

- `sluice:rollouts` (hash): model -> the rollout (JSON, `Rollout.to_json`), written with a
  compare-and-set on its `version`, so a decision based on a stale read is refused;
- `sluice:rollouts:serving` (hash): model -> the variant that serves it after a promotion;
- `sluice:rollouts:obs:<id>` and `sluice:rollouts:shadow:<id>` (streams): the observations
  and shadow pairs of one rollout, capped, expiring a while after it ends;
- `sluice:rollouts:judge` (string with a TTL): the lease of the replica that judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sluice.rollouts.report import Observation, ShadowPair
from sluice.rollouts.state import Rollout

ROLLOUTS = "sluice:rollouts"
SERVING = "sluice:rollouts:serving"
LEASE = "sluice:rollouts:judge"
DECLARED = "sluice:rollouts:declared"  # set of model@variant the profile's rollouts began
MAX_OBSERVATIONS = 200_000  # per rollout (a stream entry is about 100 bytes)
KEEP_ENDED_S = 7 * 86400

# HSET only if the stored version is the one the new state was derived from
_CAS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local have = 0
if cur then have = cjson.decode(cur)['version'] or 0 end
if have ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
# take the lease, or renew it when it is already ours
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def obs_key(rollout_id: str) -> str:
    return f"sluice:rollouts:obs:{rollout_id}"


def shadow_key(rollout_id: str) -> str:
    return f"sluice:rollouts:shadow:{rollout_id}"


def _ms_id(ts: float) -> str:
    return str(int(ts * 1000))


class RolloutStore:
    def __init__(self, client: Any) -> None:
        self._r = client

    async def all(self) -> tuple[dict[str, Rollout], dict[str, str]]:
        """Every rollout by model, and the variant serving each promoted model."""
        raw = await self._r.hgetall(ROLLOUTS)
        serving = await self._r.hgetall(SERVING)
        rollouts = {_s(k): Rollout.from_json(v) for k, v in raw.items()}
        return rollouts, {_s(k): _s(v) for k, v in serving.items()}

    async def get(self, model: str) -> Rollout | None:
        raw = await self._r.hget(ROLLOUTS, model)
        return None if raw is None else Rollout.from_json(raw)

    async def put(self, rollout: Rollout, based_on: int | None) -> Rollout | None:
        """Write it as version `based_on + 1` (None: the model has no rollout yet, or only
        an ended one); None when another write came first."""
        current = await self.get(rollout.model)
        if based_on is None:
            if current is not None and not current.ended:
                return None
            based_on = current.version if current is not None else 0
        new = replace(rollout, version=based_on + 1)
        ok = await self._r.eval(_CAS, 1, ROLLOUTS, rollout.model, based_on, new.to_json())
        if not ok:
            return None
        if new.ended:
            await self._r.hset(SERVING, new.model, new.winner)
            for key in (obs_key(new.id), shadow_key(new.id)):
                await self._r.expire(key, KEEP_ENDED_S)
        return new

    async def observe(self, rollout_id: str, observations: Sequence[Observation]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for o in observations:
            pipe.xadd(obs_key(rollout_id), o.fields(), maxlen=MAX_OBSERVATIONS,
                      approximate=True)
        await pipe.execute()

    async def shadowed(self, rollout_id: str, pair: ShadowPair) -> None:
        await self._r.xadd(shadow_key(rollout_id), pair.fields(), maxlen=MAX_OBSERVATIONS,
                           approximate=True)

    async def observations(self, rollout_id: str, since: float, after: str | None = None,
                           batch: int = 10_000) -> tuple[list[Observation], str | None]:
        """The observations added since `since` (or after the entry id `after`, exclusive),
        and the last one's id: a reader keeps it and asks only for what is new."""
        out: list[Observation] = []
        start = f"({after}" if after else _ms_id(since)
        while True:
            entries = await self._r.xrange(obs_key(rollout_id), min=start, max="+",
                                           count=batch)
            out += [Observation.from_fields(f) for _, f in entries]
            if entries:
                after = _s(entries[-1][0])
                start = f"({after}"
            if len(entries) < batch:
                return out, after

    async def shadow_pairs(self, rollout_id: str, since: float = 0.0) -> list[ShadowPair]:
        entries = await self._r.xrange(shadow_key(rollout_id), min=_ms_id(since), max="+")
        return [ShadowPair.from_fields(f) for _, f in entries]

    async def lease(self, holder: str, ttl_s: float) -> bool:
        return bool(await self._r.eval(_LEASE, 1, LEASE, holder, int(ttl_s * 1000)))

    async def ever(self, model: str, candidate: str) -> bool:
        """Whether a declared rollout of `model` to `candidate` was started before."""
        return bool(await self._r.sismember(DECLARED, f"{model}>{candidate}"))

    async def started(self, model: str, candidate: str) -> None:
        await self._r.sadd(DECLARED, f"{model}>{candidate}")

    async def forget(self, model: str) -> None:
        """Drop a model's ended rollout and its serving variant (tests, a reset)."""
        await self._r.hdel(ROLLOUTS, model)
        await self._r.hdel(SERVING, model)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
