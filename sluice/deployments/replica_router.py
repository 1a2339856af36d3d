"""Sluice's prefix-affinity router, run by Ray Serve inside each handle to an LLM deployment.

Configured per deployment with `request_router_config={"request_router_class":
"sluice.deployments.replica_router:PrefixAffinityRouter", "request_router_kwargs": {...}}`;
the decision itself is `sluice.router.replica_affinity.rank`, a pure function.

Why not Ray Serve LLM's PrefixCacheAffinityRouter (2.60): it keeps its prefix tree in a
detached actor that every routing decision calls with a blocking `ray.get` on the handle's
event loop (three round trips per request), its default never lets load override affinity (a
hot prefix queues on one replica), and it knows nothing of a shared KV tier. This one keeps
its memory in the handle's process, spends no RPC beyond Serve's own queue-length probes, and
shrinks the load margin when the prefix can be loaded from Redis.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from sluice.deployments import ray_compat  # noqa: F401 - the private hooks used below, checked
from sluice.pipeline.engines import AVOID_ATTR
from sluice.router.replica_affinity import AffinityTable, block_hashes, prompt_text, rank
from sluice.schema.serving import ReplicaRoutingConfig

ROUTER_CLASS = "sluice.deployments.replica_router:PrefixAffinityRouter"
PROBE_OTHERS = 2  # replicas probed beside the prefix's holders when Serve's cache is cold


class PrefixAffinityRouter(RequestRouter):
    """Serve request router: prefix affinity balanced against requests in flight."""

    def initialize_state(self, config: dict[str, Any] | None = None,
                         tier_enabled: bool = False, **_: Any) -> None:
        self._config = ReplicaRoutingConfig.model_validate(config or {})
        self._tier_enabled = tier_enabled
        self._table = AffinityTable(self._config.max_blocks, self._config.replicas_per_block)

    def _hashes(self, pending_request: PendingRequest | None) -> list[bytes]:
        if pending_request is None or not pending_request.args:
            return []
        text = prompt_text(pending_request.args[0])
        return block_hashes(text, self._config.block_chars) if text else []

    async def _queue_lens(self, replicas: list[RunningReplica], matched: dict[str, int]
                          ) -> dict[str, int]:
        """Requests in flight per replica, from Serve's cache. Of the replicas it lacks (its
        entries expire after a quiet spell), only those holding the prefix and two others
        are probed, as power-of-two choices would: probing hundreds of replicas for one
        request would cost more than it finds. Replicas without a figure are left out of
        the ranking (Serve tries them last)."""
        lens: dict[str, int] = {}
        missing: list[RunningReplica] = []
        for r in replicas:
            q = (self.replica_queue_len_cache.get(r.replica_id)
                 if self._use_replica_queue_len_cache else None)
            if q is None:
                missing.append(r)
            else:
                lens[r.replica_id.unique_id] = q
        holders = [r for r in missing if matched.get(r.replica_id.unique_id)]
        others = [r for r in missing if not matched.get(r.replica_id.unique_id)]
        probe = holders + random.sample(others, min(PROBE_OTHERS, len(others)))
        if probe:
            for r, q in await self._probe_queue_lens(probe, 0):
                if q is not None:
                    lens[r.replica_id.unique_id] = q
        return lens

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        avoid = set(getattr(pending_request.args[0], AVOID_ATTR, None) or ()
                    ) if pending_request is not None and pending_request.args else set()
        if avoid:  # a retry: the replicas that just failed this request go last
            kept = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid]
            if kept:
                return [kept, [r for r in candidate_replicas if r not in kept]]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        hashes = self._hashes(pending_request)
        matched = self._table.match(hashes)
        lens = await self._queue_lens(candidate_replicas, matched)
        ranking = rank(lens, hashes, matched, self._config, self._tier_enabled)
        unprobed = [r for i, r in by_id.items() if i not in lens]
        # one replica per rank: Serve tries them in order, skipping any whose queue is full
        return [[by_id[i]] for i in ranking.order if i in by_id] + (
            [unprobed] if unprobed else [])

    async def _choose_replica_for_request(self, pending_request: PendingRequest, *,
                                          is_retry: bool = False) -> RunningReplica:
        # Serve's hook for "request routed" (on_request_routed) is not called on the
        # choose_replica/dispatch path the ingress uses; this is where both paths meet.
        replica = await super()._choose_replica_for_request(pending_request, is_retry=is_retry)
        # Count it in flight now: requests routed before its slot reservation answers (which
        # then sets the true count) would otherwise all see the old, shorter queue.
        self.on_send_request(replica.replica_id)
        hashes = self._hashes(pending_request)
        if hashes:
            self._table.record(hashes, replica.replica_id.unique_id)
        return replica
