"""Draws across sources over 10,000 items, through the code path of every multi-source run
(``Interleaved`` asking ``draw_shares`` of a ControlState folded from real control events).

Stated tolerance: smooth weighted round robin keeps each source within 2 draws of
``share x draws`` (one for the algorithm, one for a share change mid-run), so over 10,000 draws
every share is honoured to 0.02 percentage points."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from processors.core.allocation import allocate
from processors.core.control import ControlState, new_event
from processors.ingest.processor import draw_shares
from processors.ingest.sources import Interleaved
from processors.ingest.sources.items import RawImage, SourceItem

DRAWS = 10_000
FLOOR = 0.05
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Endless:
    """An endless source of one-pixel-row items (the draws are under test, not the pixels)."""

    endless = True

    def __init__(self, name: str) -> None:
        self.name = name

    def __iter__(self) -> Iterator[SourceItem]:
        n = 0
        while True:
            n += 1
            yield RawImage(self.name, "test", "png", n.to_bytes(4, "big"), 1, 1, 1, NOW)


def _state(*events: tuple[str, str, dict[str, object]]) -> ControlState:
    state = ControlState.initial()
    for offset, (kind, subject, params) in enumerate(events):
        state = state.apply(new_event(kind, subject, "controller", params, at=NOW), offset)
    return state


def _draw(source: Interleaved, n: int, into: Counter[str], items: Iterator[SourceItem]) -> None:
    for _ in range(n):
        into[next(items).source] += 1


def test_weights_are_honoured_and_no_active_source_starves_over_10000_draws() -> None:
    weights = {"sdss": 0.10, "decals": 0.02, "ztf": 0.0, "hst": 0.05}
    state = _state(("source.weights_set", "pipeline", {"weights": weights}))
    source = Interleaved([Endless(n) for n in weights])
    source.shares = lambda names: draw_shares(state, names, FLOOR, NOW)
    drawn: Counter[str] = Counter()
    _draw(source, DRAWS, drawn, iter(source))
    expected = allocate(weights, list(weights), FLOOR)
    assert expected["ztf"] == FLOOR  # no signal at all, still sampled at the floor
    for name, share in expected.items():
        assert abs(drawn[name] - share * DRAWS) <= 2, (name, drawn, expected)
    assert min(drawn.values()) >= FLOOR * DRAWS - 2


def test_paused_sources_are_skipped_until_resumed_or_their_pause_ends() -> None:
    weights = {"a": 0.3, "b": 0.1, "c": 0.1}
    later = NOW + timedelta(hours=1)
    clock = {"now": NOW}
    holder = {
        "state": _state(
            ("source.weights_set", "pipeline", {"weights": weights}),
            ("source.paused", "b", {"reason": "errors"}),
            ("source.paused", "c", {"reason": "errors", "until": later}),
        )
    }
    source = Interleaved([Endless(n) for n in weights])
    source.shares = lambda names: draw_shares(holder["state"], names, FLOOR, clock["now"])
    items = iter(source)
    first: Counter[str] = Counter()
    _draw(source, DRAWS // 2, first, items)
    assert first == Counter({"a": DRAWS // 2})  # b paused until resumed, c until `later`
    clock["now"] = later  # c's pause has run out; b is still paused
    second: Counter[str] = Counter()
    _draw(source, DRAWS // 4, second, items)
    assert set(second) == {"a", "c"}
    share_a = allocate(weights, ["a", "c"], FLOOR)["a"]
    assert abs(second["a"] - share_a * (DRAWS // 4)) <= 2
    holder["state"] = holder["state"].apply(new_event("source.resumed", "b", "operator"), 3)
    third: Counter[str] = Counter()
    _draw(source, DRAWS // 4, third, items)
    for name, share in allocate(weights, list(weights), FLOOR).items():
        assert abs(third[name] - share * (DRAWS // 4)) <= 2, (name, third)
