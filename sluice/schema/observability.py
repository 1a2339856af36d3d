"""Settings of request tracing (the `tracing:` block of a profile).

Schema only: the OpenTelemetry SDK is imported by sluice.observability.tracing, which builds
the tracer from these settings, not by loading a profile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sluice.schema.base import Frozen


class TracingConfig(Frozen):
    exporter: Literal["none", "otlp", "file"] = Field(default="none", description="Where "
                                                      "spans go.")
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint "
                                      "(default: the SDK's, from OTEL_EXPORTER_OTLP_*).")
    file: str | None = Field(default=None, description="Path for the `file` exporter.")
    service_name: str = Field(default="sluice-ingress", description="service.name resource.")

    @model_validator(mode="after")
    def _file_named(self) -> TracingConfig:
        if self.exporter == "file" and not self.file:
            raise ValueError("tracing exporter `file` needs `file:` (a path)")
        return self
