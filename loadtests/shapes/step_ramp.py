"""Locust shape: see loadtests/shape_plans.py:step_ramp. Use with
`locust -f loadtests/locustfile.py,loadtests/shapes/step_ramp.py ...`."""

from locust import LoadTestShape

from loadtests.shape_plans import step_ramp


class StepRampShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        return step_ramp(self.get_run_time())
