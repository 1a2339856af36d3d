"""Locust shape: see loadtests/shape_plans.py:diurnal. Use with
`locust -f loadtests/locustfile.py,loadtests/shapes/diurnal.py ...`."""

from locust import LoadTestShape

from loadtests.shape_plans import diurnal


class DiurnalShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        return diurnal(self.get_run_time())
