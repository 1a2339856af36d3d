"""Rollouts at the ingress: the split per request, the measurements, the judging.

Every ingress replica keeps a copy of the rollouts' state (`sluice.rollouts.store`),
re-read every `poll_s`, and answers the hot-path questions from it without a Redis call:
which variant answers this request (`route`: the sticky assignment of
`sluice.rollouts.assignment`), and whether a copy goes to a shadow (`shadow_for`). Each
answered request of a variant under rollout becomes an observation, buffered and added to
Redis in batches. One replica at a time (a lease in Redis) judges the running canaries every
`evaluate_s`: it reads the step's observations of both variants from every replica, runs the
gates and writes the decision; a rollback alerts (log, metric, webhook). When a rollout has
ended, the variant that lost is drained: no replica sends it a request after one more
poll, and its answers in flight finish. Its deployment is removed by the next config update
that leaves it out of the profile (`sluice deploy`, or `serve deploy` of `sluice build`): an
application's engine deployments autoscale, which Serve's external scaler (the only way to
scale a deployment from outside its config) refuses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    SluiceError,
    Unavailable,
)
from sluice.observability.outcome import Outcome
from sluice.rollouts import state as ops
from sluice.rollouts.assignment import choose, pick
from sluice.rollouts.report import Observation, ShadowPair, ab_report, shadow_report, window
from sluice.rollouts.state import Rollout
from sluice.rollouts.store import RolloutStore
from sluice.rollouts.targets import check_spec
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

log = logging.getLogger(__name__)
T = TypeVar("T")
ACTIONS = ("pause", "resume", "promote", "abort")
EVENTS = ("started", "advanced", "promoted", "rolled_back", "aborted", "paused", "resumed",
          "retired")


class Rollouts:
    def __init__(self, settings: RolloutSettings, store: RolloutStore | None,
                 models: Mapping[str, tuple[str, str]], deployed: Collection[str],
                 on_event: Callable[[Rollout, str], None] | None = None,
                 on_read: Callable[[Rollout], None] | None = None,
                 clock: Callable[[], float] = time.time, holder: str | None = None,
                 rng: random.Random | None = None,
                 on_compared: Callable[[Rollout, ShadowPair | None], None] | None = None
                 ) -> None:
        """models: each catalog model's base and variant label (`large@v2` -> `large`,
        `v2`; `large` -> `large`, its `version`), and the same of every cascade route and
        prompt template (`auto@v2` -> `auto`, `v2`; `prompt:support@v2` ->
        `prompt:support`, `v2`: `sluice.rollouts.targets`); deployed: the models, routes
        and templates this ingress can answer with; on_event(rollout, event): a decision
        was taken (metric, log, webhook); on_read(rollout): each rollout, whenever the
        state is read or changed (a gauge of its share on every replica);
        on_compared(rollout, pair): a compared pair (the shadow's, or a canary's quality
        sample), None for a sample skipped at the bound of copies in flight (the shadow
        metrics)."""
        self.settings, self._store = settings, store
        self._base = {name: base for name, (base, _) in models.items()}
        self._labels = {name: label for name, (_, label) in models.items()}
        self._deployed = set(deployed)
        self._on_event = on_event or (lambda _r, _e: None)
        self._on_read = on_read or (lambda _r: None)
        self._on_compared = on_compared or (lambda _r, _p: None)
        self._clock, self._rng = clock, rng or random.Random()
        self._holder = holder or uuid.uuid4().hex
        self._rollouts: dict[str, Rollout] = {}  # by model
        self._serving: dict[str, str] = {}  # model -> variant, after a promotion
        # the hot path's view of them, rebuilt by _index on every change
        self._watched: dict[str, str] = {}  # variant -> the id of its running rollout
        self._splits: dict[str, tuple[str, str, float, str, str | None]] = {}  # model ->
        #   (candidate, baseline, candidate's share, salt, split_by) of its running rollout
        self._buffer: list[tuple[str, str, bool, float | None, float | None, float]] = []
        # the current step's observations read so far, per rollout: (rollout id, step
        # start) -> (the last entry's id, what it read), so each read asks only what is new
        self._steps: dict[str, tuple[float, str | None, list[Observation]]] = {}
        self._shadows_in_flight = 0
        self.shadow_skipped = 0
        self._task: asyncio.Task[None] | None = None

    # ---- the hot path (no I/O) -------------------------------------------------------

    def route(self, model: str, subject: str | Mapping[str, str]) -> str:
        """The variant that answers this request for `model` (the model itself when none
        is under rollout). subject: who the request is (`assignment.subjects`, of which the
        rollout's `split_by` picks one; or one subject)."""
        split = self._splits.get(model)
        if split is None:
            return self._serving.get(model, model)
        candidate, baseline, share, salt, split_by = split
        if share <= 0:
            return baseline
        if share >= 1:
            return candidate
        return choose(pick(subject, split_by), salt,
                      [(candidate, share), (baseline, 1 - share)])

    def label(self, model: str) -> str | None:
        """The variant label of a catalog model (`x-sluice-variant`)."""
        return self._labels.get(model)

    def compare_for(self, model: str, answered_by: str) -> tuple[Rollout, str] | None:
        """Whether this answer is compared with another variant's answer to a copy of the
        request, and whose: a shadow copies a sample of the baseline's requests to the
        candidate; a canary with a quality gate copies a sample of the candidate's to the
        baseline. None when not sampled, or when the copies in flight are at their bound
        (counted in `shadow_skipped`)."""
        r = self._rollouts.get(model)
        if r is None or r.status != "running":
            return None
        if r.spec.kind == "shadow" and answered_by == r.baseline:
            copy_to, fraction = r.candidate, r.shadow_fraction()
        elif (r.spec.kind == "canary" and answered_by == r.candidate
              and r.spec.gates.min_agreement is not None):
            copy_to, fraction = r.baseline, r.spec.gates.quality_sample
        else:
            return None
        if self._rng.random() >= fraction:
            return None
        if self._shadows_in_flight >= self.settings.shadow_max_in_flight:
            self.shadow_skipped += 1
            self._on_compared(r, None)
            return None
        return r, copy_to

    def observe(self, outcome: Outcome) -> None:
        """An answered request (settlement's outcome): counted for the rollout of each
        variant that answered it (the model's, and a route's or a prompt template's
        version: `served_variants`). A cache hit did no engine work, and a client's mistake
        is not the variant's."""
        if outcome.cache == "hit" or (400 <= outcome.status < 500):
            return
        for variant in (outcome.model, *outcome.served_variants):
            rollout_id = self._watched.get(variant)
            if rollout_id is None:
                continue
            if outcome.status >= 500 or outcome.failed:
                self._buffer.append((rollout_id, variant, True, None, None,
                                     outcome.cost_usd))
                continue
            # a whole answer's first token is its arrival (as the selector counts it)
            ttft = outcome.ttft_s
            self._buffer.append((rollout_id, variant, False,
                                 ttft if ttft is not None else outcome.duration_s,
                                 outcome.tpot_s, outcome.cost_usd))

    def failed(self, model: str, exc: BaseException) -> None:
        """A variant's engine call failed before it answered (a 5xx it caused)."""
        rollout_id = self._watched.get(model)
        if rollout_id is None or (isinstance(exc, SluiceError) and exc.status < 500):
            return
        self._buffer.append((rollout_id, model, True, None, None, 0.0))

    # ---- shadow ------------------------------------------------------------------------

    async def shadowed(self, r: Rollout, copy: Awaitable[tuple[str, int]],
                       told: Awaitable[tuple[str, int, float]],
                       agree: Callable[[str, str], bool], copy_is_candidate: bool = True
                       ) -> None:
        """One compared pair: the copy's answer (text, tokens) against the one the user got
        (text, tokens, latency), recorded as the candidate's against the baseline's; never
        returned, never billed."""
        self._shadows_in_flight += 1
        started = self._clock()
        try:
            try:
                text, tokens = await asyncio.wait_for(copy, self.settings.shadow_timeout_s)
                failed, took = False, self._clock() - started
            except Exception as exc:  # noqa: BLE001 - a copy never fails anything
                log.warning("rollout %s: the copy of a request failed: %r", r.id, exc)
                text, tokens, failed, took = "", 0, True, self._clock() - started
            user_text, user_tokens, user_s = await asyncio.wait_for(
                told, self.settings.shadow_timeout_s)
            agreed = None if failed else agree(user_text, text)
            if copy_is_candidate:
                pair = ShadowPair(agreed, failed, user_s, took, user_tokens, tokens)
            else:  # the candidate answered the user; the baseline answered the copy
                pair = ShadowPair(agreed, False, took, user_s, tokens, user_tokens)
            self._on_compared(r, pair)
            if self._store is not None:
                await self._store.shadowed(r.id, pair)
        except Exception as exc:  # noqa: BLE001 - the user's answer failed, or Redis did
            log.info("rollout %s: compared pair not recorded: %r", r.id, exc)
        finally:
            self._shadows_in_flight -= 1

    # ---- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """Follow the rollouts in the background (from the ingress's event loop)."""
        if self._store is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        store = self._store
        assert store is not None
        last_judged = 0.0
        while True:
            try:
                await self.flush()
                await self.refresh()
                now = self._clock()
                if now - last_judged >= self.settings.evaluate_s:
                    last_judged = now
                    if await store.lease(self._holder, 3 * self.settings.evaluate_s):
                        await self.declared()
                        await self.judge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: keep the last state
                log.warning("rollouts: %r (keeping the last state read)", exc)
            await asyncio.sleep(self.settings.poll_s)

    async def refresh(self) -> None:
        assert self._store is not None
        self._rollouts, self._serving = await self._store.all()
        self._index()

    def _index(self) -> None:
        """The hot path's lookups, from the rollouts now known."""
        self._watched, self._splits = {}, {}
        for r in self._rollouts.values():
            self._on_read(r)
            if r.ended:
                continue
            self._watched[r.candidate] = self._watched[r.baseline] = r.id
            self._splits[r.model] = (r.candidate, r.baseline, r.share(), r.salt,
                                     r.spec.split_by)

    async def flush(self) -> None:
        """Add the buffered observations to Redis (dropped if it fails: they are
        measurements, and the gates wait for enough of them)."""
        if self._store is None or not self._buffer:
            return
        buffered, self._buffer = self._buffer, []
        by_rollout: dict[str, list[Observation]] = {}
        for rollout_id, model, error, ttft, tpot, cost in buffered:
            by_rollout.setdefault(rollout_id, []).append(
                Observation(model, error, ttft, tpot, cost))
        for rollout_id, observations in by_rollout.items():
            await self._store.observe(rollout_id, observations)

    async def judge(self) -> None:
        """Judge every running canary once; mark the losers of ended rollouts drained."""
        assert self._store is not None
        for r in list(self._rollouts.values()):
            if r.canary is not None and r.status == "running":
                since = r.step_started()
                seen = await self._step(r)
                candidate = window(seen, r.candidate)
                if r.spec.gates.min_agreement is not None:
                    judged = [p for p in await self._store.shadow_pairs(r.id, since)
                              if p.agreed is not None]
                    candidate = replace(candidate, agreed=sum(bool(p.agreed) for p in judged),
                                        pairs=len(judged))
                now = self._clock()
                new = ops.evaluate(r, now, candidate, window(seen, r.baseline))
                if (new.status, new.canary.step if new.canary else 0) != (
                        r.status, r.canary.step if r.canary else 0):
                    await self._write(r, new, new.history[-1]["event"])
                elif new.canary != r.canary:  # held: the gates' latest readings
                    written = await self._store.put(new, r.version)
                    if written is not None:
                        self._rollouts[written.model] = written
            elif r.ended and not r.retired:
                await self._drain(r)

    async def declared(self) -> None:
        """Start the profile's declared rollouts that never ran (`rollouts.start`)."""
        assert self._store is not None
        for spec in self.settings.start:
            if await self._store.ever(spec.model, spec.candidate):
                continue
            try:
                await self._begin(spec)
            except (Conflict, InvalidRequest) as exc:  # one is running; or not deployed
                log.warning("declared rollout of %s to %s not started: %s", spec.model,
                            spec.candidate, exc.message)
                continue
            await self._store.started(spec.model, spec.candidate)

    async def _step(self, r: Rollout) -> list[Observation]:
        """The observations of the rollout's current step, every replica's, read
        incrementally."""
        assert self._store is not None
        since = r.step_started()
        held = self._steps.get(r.id)
        if held is None or held[0] != since:
            held = (since, None, [])
        new, last = await self._store.observations(r.id, since, held[1])
        seen = held[2] + new
        self._steps = {k: v for k, v in self._steps.items()
                       if k in {x.id for x in self._rollouts.values() if not x.ended}}
        self._steps[r.id] = (since, last, seen)
        return seen

    async def _drain(self, r: Rollout) -> None:
        loser = r.loser
        assert loser is not None
        ended_at = float(r.history[-1]["t"]) if r.history else r.created
        if self._clock() - ended_at < 2 * self.settings.poll_s:
            return  # some replica may not have read the end yet
        what = (f"drained: no requests go to {loser}; leave it out of the profile at the "
                "next config update to remove its deployment")
        await self._write(r, ops.retired(r, self._clock(), what), "retired")

    async def _write(self, old: Rollout, new: Rollout, event: str) -> Rollout:
        assert self._store is not None
        written = await self._store.put(new, old.version)
        if written is None:
            raise Conflict(f"The rollout of '{old.model}' changed meanwhile; retry.")
        self._rollouts[written.model] = written
        if written.ended:
            self._serving[written.model] = written.winner
        self._index()
        self._on_event(written, event)
        if event == "rolled_back":
            log.error("rollout %s of %s rolled back: %s", written.id, written.model,
                      written.reason)
        else:
            log.info("rollout %s of %s: %s (share %.0f%%)", written.id, written.model,
                     event, written.share() * 100)
        return written

    # ---- the admin API -----------------------------------------------------------------

    async def _stored(self, work: Awaitable[T]) -> T:
        """An admin call's Redis work: a store that fails is a 503 (retry), not a 500."""
        try:
            return await work
        except STORE_ERRORS as exc:
            raise Unavailable(f"The rollouts' store (Redis) failed: {type(exc).__name__}; "
                              "retry.", code="rollouts_store_unavailable") from None

    def _needs_store(self) -> RolloutStore:
        if self._store is None:
            raise Unavailable("Rollouts keep their state in Redis, and this platform runs "
                              "without one (set the profile's redis_url).",
                              code="rollouts_unavailable")
        return self._store

    async def _begin(self, spec: RolloutSpec) -> dict[str, Any]:
        check_spec(spec, self._base, self._deployed)
        store = self._needs_store()  # (a client's mistake is said first, even without it)
        await self.refresh()
        baseline = self._serving.get(spec.model, spec.model)
        if baseline == spec.candidate:
            raise Conflict(f"'{spec.candidate}' already serves '{spec.model}'.",
                           code="already_serving")
        rollout_id = f"{spec.model}-{spec.to}-{uuid.uuid4().hex[:6]}"
        new = ops.begin(rollout_id, spec, baseline, self._clock())
        written = await store.put(new, None)
        if written is None:
            raise Conflict(f"'{spec.model}' already has a rollout running: end it first "
                           "(promote or abort).", code="rollout_running")
        self._rollouts[spec.model] = written
        self._index()
        self._on_event(written, "started")
        return await self._status(spec.model)

    async def _act(self, model: str, action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise NotFound(f"Unknown rollout action '{action}' (one of {', '.join(ACTIONS)}).")
        store = self._needs_store()
        for _ in range(3):
            r = await store.get(model)
            if r is None:
                raise NotFound(f"'{model}' has no rollout.")
            now = self._clock()
            new = {"pause": ops.pause, "resume": ops.resume, "promote": ops.promote,
                   "abort": ops.abort}[action](r, now)
            if new == r:
                raise Conflict(f"The rollout of '{model}' is {r.status}: it cannot {action}.",
                               code="rollout_state")
            try:
                await self._write(r, new, {"promote": "promoted", "abort": "aborted",
                                           "pause": "paused", "resume": "resumed"}[action])
            except Conflict:
                continue
            return await self._status(model)
        raise Conflict(f"The rollout of '{model}' kept changing; retry.")

    async def _status(self, model: str) -> dict[str, Any]:
        store = self._needs_store()
        r = await store.get(model)
        if r is None:
            raise NotFound(f"'{model}' has no rollout.")
        view = r.view()
        seen = await self._step(r)
        view["measured"] = ab_report(seen, r.candidate, r.baseline, r.spec.gates.confidence)
        view["measured"]["since"] = r.step_started()
        if r.spec.kind == "shadow" or r.spec.gates.min_agreement is not None:
            view["shadow"] = shadow_report(
                await store.shadow_pairs(r.id, 0.0 if r.spec.kind == "shadow" else
                                         r.step_started()), r.spec.gates.confidence)
            view["shadow"]["skipped_here"] = self.shadow_skipped
        return view

    async def _list(self) -> dict[str, Any]:
        store = self._needs_store()
        rollouts, serving = await store.all()
        return {"rollouts": [r.view() for r in rollouts.values()], "serving": serving}

    async def begin(self, spec: RolloutSpec) -> dict[str, Any]:
        """Start a rollout (404 for a model or variant the platform lacks, 400 for a variant
        named as the model, 409 while one runs or when the candidate already serves)."""
        return await self._stored(self._begin(spec))

    async def act(self, model: str, action: str) -> dict[str, Any]:
        """pause, resume, promote or abort (404 without a rollout, 409 when it cannot)."""
        return await self._stored(self._act(model, action))

    async def status(self, model: str) -> dict[str, Any]:
        """The rollout with what its current step measured."""
        return await self._stored(self._status(model))

    async def list(self) -> dict[str, Any]:
        return await self._stored(self._list())

    def restored(self, rollouts: Mapping[str, Rollout]) -> None:
        """Tests: a state as if read from the store."""
        self._rollouts = dict(rollouts)
        self._index()
        self._serving = {r.model: r.winner for r in self._rollouts.values() if r.ended}
