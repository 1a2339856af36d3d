"""The `args` of Sluice's application in a Ray Serve config file.

`sluice build` writes them; Serve's controller hands them to the application builder
(`sluice.deployments.app:app_builder`) on the cluster, which validates them here. They name
the platform files by path on the machine that builds the app and carry the fingerprint of
their contents; secrets never go in them (a Serve config is shown by `serve config` and the
dashboard), so a Redis URL with a password is refused here and comes from the environment.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from sluice.schema.base import Frozen
from sluice.schema.redis_url import SENTINEL, parse_sentinel, validate_url


class ServeAppArgs(Frozen):
    """What the application builder needs to compose the platform on a cluster."""

    root: str = Field(
        description="Directory holding platform/ (and relative model sources) on the machine "
        "that builds the app: the cluster's head, e.g. /home/ray/sluice.")
    profile: str = Field(description="The profile YAML, absolute or relative to `root`.")
    routes: str | None = Field(
        default=None, description="A routing YAML used instead of the profile's `routing` "
        "(absolute or relative to `root`).")
    redis_url: str | None = Field(
        default=None, description="The shared Redis, without a password. Unset: "
        "$SLUICE_REDIS_URL of the building process, else the profile's redis_url, else the "
        "head node's Redis at redis://HEAD:$SLUICE_HEAD_REDIS_PORT (6380), with "
        "$SLUICE_REDIS_PASSWORD.")
    fingerprint: str | None = Field(
        default=None, description="sha256 of the profile, catalog and routing files `sluice "
        "build` read; the builder refuses files that differ (unset: not checked).")

    @field_validator("redis_url")
    @classmethod
    def _no_secret(cls, url: str | None) -> str | None:
        if url is None:
            return None
        validate_url(url)
        password = (parse_sentinel(url).password if url.startswith(SENTINEL)
                    else urlsplit(url).password)
        if password:
            raise ValueError("a Serve config is readable by `serve config` and the dashboard: "
                             "give a Redis password through SLUICE_REDIS_URL (or "
                             "SLUICE_REDIS_PASSWORD) on the cluster, not in the config")
        return url
