"""Rollouts between a model's variants: the profile's settings and one rollout's request.

A variant is a catalog model named `base@label` (e.g. `large@v2`), deployed beside `base`,
a version of a cascade route in the routes file (`auto@v2` beside `auto`), or a version of
a prompt template of the profile (`support@v2` beside `support`), which a rollout names
`prompt:support` (so a template never clashes with a model of the same name).
A rollout (`sluice rollout start`, `POST /v1/admin/rollouts`) decides which variant answers
the requests for `base`: a **canary** moves the candidate's share through steps, judged by
statistical gates, and rolls back on a breach; an **A/B** test holds a fixed split and
reports the difference; a **shadow** copies a sample of requests to the candidate, whose
answers are compared and never returned.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sluice.schema.base import Frozen

ROLLOUT_ID = r"^[a-z0-9][a-z0-9._-]*$"


class GateSpec(Frozen):
    """When a canary step may advance and when it is rolled back (sluice.rollouts.gates)."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Of every interval a "
                              "gate decides on.")
    min_requests: int = Field(default=200, ge=10, description="Requests per variant in a step "
                              "before any gate decides.")
    error_margin: float = Field(default=0.01, ge=0, lt=1, description="How much higher the "
                                "candidate's error rate (5xx) may be than the baseline's.")
    latency_quantile: float = Field(default=0.95, gt=0, lt=1, description="The latency "
                                    "quantile compared (TTFT and TPOT).")
    ttft_max_ratio: float = Field(default=1.2, ge=1, description="The candidate's quantile of "
                                  "TTFT may be at most this times the baseline's.")
    tpot_max_ratio: float = Field(default=1.2, ge=1, description="The same for TPOT.")
    min_agreement: float | None = Field(
        default=None, gt=0, le=1, description="Quality (off unless set): on a sample of the "
        "candidate's requests the baseline answers the same in the background, and the "
        "share of pairs whose answers agree (text overlap) must be at least this.")
    quality_sample: float = Field(default=0.1, gt=0, le=1, description="The share of the "
                                  "candidate's requests compared with the baseline.")
    min_pairs: int = Field(default=50, ge=10, description="Compared pairs per step before "
                           "the agreement gate decides.")


class RolloutSpec(Frozen):
    """One rollout, as started by the CLI or the admin API."""

    model: str = Field(description="What clients ask for: a model (e.g. `large`), a "
                       "cascade route (`auto`), or a prompt template as `prompt:<name>` "
                       "(`prompt:support`, which `x-sluice-prompt: support` asks for).")
    to: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="The candidate variant's "
                    "label: the catalog model, route or template `<model>@<to>` answers its "
                    "share.")
    kind: Literal["canary", "ab", "shadow"] = Field(default="canary", description="canary: "
                                                    "steps and gates; ab: a fixed split; "
                                                    "shadow: sampled copies, never returned.")
    steps: tuple[Annotated[int, Field(gt=0, le=100)], ...] = Field(
        default=(5, 10, 25, 50, 100), min_length=2, description="canary: the candidate's "
        "percent of the traffic at each step, rising strictly to 100.")
    step_s: float = Field(default=600.0, gt=0, description="canary: shortest step.")
    max_step_s: float = Field(default=7200.0, gt=0, description="canary: a step still "
                              "undecided after this long rolls back (not enough evidence); "
                              "at least `step_s`.")
    percent: float = Field(default=50.0, gt=0, le=100, description="ab: the candidate's "
                           "percent of the traffic; shadow: the percent of requests copied.")
    split_by: Literal["user", "key", "tenant"] | None = Field(
        default=None, description="canary and ab: who stays in one arm. user: the "
        "`sticky_header` (without it, the API key); key: the API key (an application); "
        "tenant: the key's tenant (a whole tenant; with few tenants the shares are "
        "coarse). Unset: the profile's rule (`sticky_header`, then the key where "
        "`sticky_key`, else each request on its own).")
    gates: GateSpec = Field(default_factory=GateSpec, description="canary: the gates.")

    @model_validator(mode="after")
    def _steps(self) -> RolloutSpec:
        if self.kind == "canary":
            steps = list(self.steps)
            if (not steps or steps != sorted(set(steps)) or steps[-1] != 100
                    or len(steps) < 2 or steps[0] <= 0):
                raise ValueError("steps rise strictly from above 0 to 100, with at least one "
                                 "share below 100")
            if self.max_step_s < self.step_s:
                raise ValueError("max_step_s must be at least step_s")
        return self

    @property
    def candidate(self) -> str:
        return f"{self.model}@{self.to}"


class RolloutSettings(Frozen):
    """How the ingress replicas follow and judge rollouts (their state lives in Redis)."""

    poll_s: float = Field(default=1.0, gt=0, le=60, description="How often each ingress "
                          "replica re-reads the rollouts' state (the longest a change of "
                          "share takes to reach it).")
    evaluate_s: float = Field(default=5.0, gt=0, le=600, description="How often the gates "
                              "are judged (by one ingress replica at a time, under a lease).")
    sticky_header: str = Field(default="x-sluice-user", pattern=r"^[a-z0-9-]+$",
                               description="The request header naming a user: a user stays "
                               "in one variant.")
    sticky_key: bool = Field(default=False, description="Without the user header, keep each "
                             "API key in one variant (an A/B split by application); off: "
                             "such requests are split one by one.")
    shadow_max_in_flight: int = Field(default=4, ge=1, description="Shadow calls one ingress "
                                      "replica runs at once; a sample beyond is skipped.")
    shadow_timeout_s: float = Field(default=60.0, gt=0, description="Longest a shadow pair "
                                    "waits for both answers.")
    start: tuple[RolloutSpec, ...] = Field(
        default=(), description="Rollouts declared in the profile: each is started once, "
        "when the model has never had a rollout to that variant (so a restart or a config "
        "update does not start it again, and one that ended stays ended).")
