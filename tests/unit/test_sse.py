"""The one SSE codec (sluice/sse.py)."""

from sluice import sse


def test_events_round_trip_and_the_stream_end() -> None:
    chunk = sse.encode({"id": "a", "choices": []}) + sse.encode({"id": "b"}) + sse.DONE
    events = [e for e in chunk.split("\n\n") if e]
    assert [sse.payload(e) for e in events] == [{"id": "a", "choices": []}, {"id": "b"}, None]
    assert sse.ends(chunk) and not sse.ends(sse.encode({"id": "a"}))
    assert sse.encode({"x": 1}, end="") == 'data: {"x":1}'


def test_errors_and_junk() -> None:
    assert sse.is_error('data: {"error": {"message": "m"}}') and sse.is_error(
        sse.encode({"error": {"message": "m"}}))
    assert not sse.is_error(sse.encode({"id": "x"}))
    assert sse.payload("data: {not json") is None and sse.payload(": ping") is None
    assert sse.payload("data: [1, 2]") is None
