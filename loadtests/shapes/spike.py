"""Locust shape: see loadtests/shape_plans.py:spike. Use with
`locust -f loadtests/locustfile.py,loadtests/shapes/spike.py ...`."""

from locust import LoadTestShape

from loadtests.shape_plans import spike


class SpikeShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        return spike(self.get_run_time())
