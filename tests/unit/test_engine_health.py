"""An engine replica's own view of whether it still answers (sluice.deployments.engine_health):
what makes it suspect, and the probe that settles it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sluice.deployments.engine_health import HealthSettings, RequestWatch, probe


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _items(*items, fail: BaseException | None = None, delay_s: float = 0):
    for item in items:
        await asyncio.sleep(delay_s)
        yield item
    if fail is not None:
        raise fail


def _drain(watch: RequestWatch, stream, streaming: bool = True) -> list:
    async def run() -> list:
        return [item async for item in watch.watched(stream, streaming)]
    return asyncio.run(run())


def _error(code: int) -> SimpleNamespace:
    return SimpleNamespace(error=SimpleNamespace(code=code, message="x"))


def test_requests_that_end_well_leave_the_replica_unsuspected() -> None:
    watch = RequestWatch(HealthSettings())
    assert _drain(watch, _items("a", "b")) == ["a", "b"]
    assert _drain(watch, _items("whole"), streaming=False) == ["whole"]
    _drain(watch, _items(_error(400)))  # a client's mistake says nothing about the engine
    assert watch.suspect is None


def test_an_engine_side_error_or_exception_makes_it_suspect_until_cleared() -> None:
    watch = RequestWatch(HealthSettings())
    _drain(watch, _items([_error(500)]))
    assert "server error" in (watch.suspect or "")
    watch.cleared()
    assert watch.suspect is None
    with pytest.raises(RuntimeError):
        _drain(watch, _items("a", fail=RuntimeError("EngineCore died")), streaming=False)
    assert "failed inside the engine" in (watch.suspect or "")


def test_an_abandoned_stream_makes_it_suspect_an_abandoned_plain_request_does_not() -> None:
    async def leave(streaming: bool) -> RequestWatch:
        watch = RequestWatch(HealthSettings())
        gen = watch.watched(_items("a", "b", "c"), streaming)
        await gen.__anext__()
        await gen.aclose()  # the reader went away (the ingress cancelled the call)
        return watch

    assert "abandoned" in (asyncio.run(leave(True)).suspect or "")
    assert asyncio.run(leave(False)).suspect is None


def test_a_stream_silent_past_the_bound_makes_it_suspect_while_it_lasts() -> None:
    clock = _Clock()
    watch = RequestWatch(HealthSettings(silent_after_s=30), clock)

    async def run() -> None:
        gen = watch.watched(_items("a", "b"), True)
        await gen.__anext__()
        clock.now += 20
        assert watch.suspect is None  # quiet, but within the bound
        clock.now += 15
        assert "produced nothing for 35 s" in (watch.suspect or "")
        await gen.__anext__()  # it produced again
        assert watch.suspect is None
        async for _ in gen:
            pass

    asyncio.run(run())
    assert watch.suspect is None


def test_the_probe_passes_on_an_answer_and_fails_on_an_error_nothing_or_silence() -> None:
    async def answering():
        return _items(SimpleNamespace(choices=["ok"]))

    async def refusing():
        return _items(_error(500))

    async def empty():
        return _items()

    async def wedged():
        return _items("never", delay_s=5)

    asyncio.run(probe(answering, 1))
    for complete, match in ((refusing, "refused"), (empty, "nothing"), (wedged, "within")):
        with pytest.raises(RuntimeError, match=match):
            asyncio.run(probe(complete, 0.1))
