"""The replay's progress display: windowed rates per phase, what is left, both forms."""

from __future__ import annotations

import io

from processors.replay_progress import ReplayProgress, ReplayReading


def test_plain_lines_are_rate_limited_and_the_last_reading_is_shown_at_the_end() -> None:
    out = io.StringIO()
    view = ReplayProgress(out, "rescore", live=False, interval_s=5.0, window_s=10.0)
    for tick in range(25):  # 12 s at 100 records/s, a reading every 0.5 s
        t = tick * 0.5
        n = int(t * 100)
        view.show(t, t, ReplayReading("hot log", n, n - n // 10, n // 10, 2000, True))
    view.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 0, 5 and 10 s, then the last reading (12 s) on close
    assert lines[-1].startswith("[  12.0s] replay rescore, hot log: read 1200/~2000 100/s")
    assert "replayed 1080 90/s" in lines[-1] and "skipped 120" in lines[-1]
    assert lines[-1].endswith("left 8s")  # 800 records at 100/s


def test_a_new_phase_has_rates_of_its_own_and_an_exact_total() -> None:
    out = io.StringIO()
    view = ReplayProgress(out, "rescore", live=False, interval_s=0.0)
    for t in range(5):
        view.show(float(t), float(t), ReplayReading("hot log", 100 * t, 100 * t, 0))
    view.show(5.0, 5.0, ReplayReading("ClickHouse", 0, 0, 0, 40))
    view.show(6.0, 6.0, ReplayReading("ClickHouse", 10, 10, 0, 40))
    last = out.getvalue().splitlines()[-1]
    assert "ClickHouse: read 10/40 10/s" in last  # not the hot log's 100/s
    assert last.endswith("left 3s")
    assert "left -" in out.getvalue().splitlines()[0]  # the hot log's total was not known


def test_the_live_table_shows_the_phase_counts_and_what_is_left() -> None:
    out = io.StringIO()
    view = ReplayProgress(out, "rebuild", live=True)
    view.show(0.0, 0.0, ReplayReading("hot log", 0, 0, 0, 500, True))
    view.show(2.0, 2.0, ReplayReading("hot log", 200, 180, 20, 500, True))
    view.close()
    drawn = out.getvalue()
    for text in ("skyloop replay rebuild", "hot log", "replayed", "skipped", "~300", "100.0"):
        assert text in drawn, text


def test_a_phase_ends_with_its_last_reading_before_the_next_begins() -> None:
    out = io.StringIO()
    view = ReplayProgress(out, "rescore", live=False, interval_s=60.0)
    view.show(0.0, 0.0, ReplayReading("hot log", 0, 0, 0))
    view.show(1.0, 1.0, ReplayReading("hot log", 16, 16, 0))  # not due: 60 s between lines
    view.note("replay rescore: 10 stored images older than the hot log")
    view.show(2.0, 2.0, ReplayReading("ClickHouse", 0, 0, 0, 10))
    view.show(3.0, 3.0, ReplayReading("ClickHouse", 10, 10, 0, 10))
    view.close()
    lines = out.getvalue().splitlines()
    assert lines[1] == "replay rescore: 10 stored images older than the hot log"
    phases = [line[10:].split(":")[0] for line in lines if line.startswith("[")]
    assert phases == [
        "replay rescore, hot log",
        "replay rescore, hot log",  # its last reading, once the next phase begins
        "replay rescore, ClickHouse",
        "replay rescore, ClickHouse",  # the last reading, on close
    ]
    assert "read 16 " in lines[2] and "read 10/10" in lines[-1]
