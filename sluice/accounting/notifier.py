"""Optional webhook for alerts the ingress raises itself (budgets): one JSON POST each.

Sent off the hot path, bounded by `timeout_s`, not retried (the same condition is also a
Prometheus metric, which Alertmanager can page on); a failure is logged and counted.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from sluice.schema.accounting import WebhookConfig

log = logging.getLogger(__name__)


class WebhookNotifier:
    def __init__(self, config: WebhookConfig) -> None:
        self._config = config
        self.counters = {"sent": 0, "failed": 0}

    async def send(self, event: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self._config.timeout_s) as client:
                response = await client.post(self._config.url,
                                             json={"source": "sluice", **event})
                response.raise_for_status()
            self.counters["sent"] += 1
        except (httpx.HTTPError, OSError) as exc:  # an alert must never fail anything else
            self.counters["failed"] += 1
            log.warning("alert webhook %s failed: %r", self._config.url, exc)
