"""The run's progress display: restart-proof totals, windowed rates, time left, both forms."""

from __future__ import annotations

import io

from processors.run_progress import Counts, RunProgress, Totals, eta_s


def _reading(t: float, rate: float, paused: bool = False) -> Counts:
    n = int(t * rate)
    return Counts(ingest=n, published=n, score=max(n - 20, 0), store=max(n - 30, 0), paused=paused)


def test_totals_carry_a_restarted_workers_count_and_never_go_back() -> None:
    totals = Totals()
    seen = [totals.add("score", n) for n in (0, 50, 120, 3, 40, 0, 7)]
    assert seen == [0, 50, 120, 123, 160, 160, 167]
    assert seen == sorted(seen)
    assert totals.add("store", 9) == 9  # per key


def test_plain_lines_are_rate_limited_and_show_rates_lag_and_time_left() -> None:
    out = io.StringIO()
    view = RunProgress(out, 1000, live=False, interval_s=5.0, window_s=10.0)
    for tick in range(41):  # 20 s at 50 images/s, a reading every 0.5 s
        t = tick * 0.5
        view.show(t, t, _reading(t, 50.0))
    view.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # at 0, 5, 10, 15 and 20 s
    last = lines[-1]
    assert "ingest 1000/1000 50/s" in last
    assert "score 980 50/s (20 behind)" in last and "store 970 50/s (10 behind)" in last
    assert last.endswith("left 1s")  # 30 images left at 50/s


def test_a_stalled_stage_drops_to_zero_within_the_window_and_has_no_time_left() -> None:
    out = io.StringIO()
    view = RunProgress(out, None, live=False, interval_s=0.0, window_s=4.0)
    for t in range(10):
        view.show(float(t), float(t), _reading(min(t, 5), 10.0))  # stalls at t = 5
    assert "ingest 50 0/s" in out.getvalue().splitlines()[-1]
    assert out.getvalue().splitlines()[-1].endswith("left -")
    assert eta_s(None, Counts(ingest=50, store=20), 10.0, 6.0) == 9.0


def test_the_live_table_shows_every_stage_and_a_pause() -> None:
    out = io.StringIO()
    view = RunProgress(out, 200, live=True)
    view.show(0.0, 0.0, _reading(0.0, 10.0))
    view.show(2.0, 2.0, _reading(2.0, 10.0, paused=True))
    view.close()
    drawn = out.getvalue()
    for text in ("ingest", "score", "store", "20 / 200", "PAUSED", "per second", "behind"):
        assert text in drawn, text
