"""A control event the fold refuses is stored in ``control_events`` and dead-lettered with the
reason, once under FINAL however often the sink reads it (embedded broker, real chdb)."""

from __future__ import annotations

from pathlib import Path

from processors.core.clickhouse import connect
from processors.core.codec import default_codec
from processors.core.config import Settings, load_settings
from processors.core.control import new_event
from processors.core.kafka import ensure_topics, make_producer, produce_control_event
from processors.core.progress import read_progress
from tests.sink.test_sink_processor import running_sink, wait_for


def test_a_refused_event_is_stored_and_dead_lettered_once(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    events = [
        new_event("source.paused", "sky", "operator:a", {"reason": "maintenance"}),
        new_event("source.weights_set", "pipeline", "intruder", {"weights": {"sky": 1e300}}),
        new_event("model.promoted", "ghost@9", "intruder", {"model_version": "ghost@9"}),
        new_event("source.resumed", "sky", "operator:a"),
    ]
    for event in events:
        produce_control_event(producer, settings, event)
    hostile_bytes = default_codec().encode(events[1], "skyloop.ControlEvent")

    # the second sink reads everything again (another group): a redelivery of every event
    again = load_settings(
        data_dir=settings.data_dir,
        topic_prefix=settings.kafka.topic_prefix,
        group_prefix=settings.kafka.group_prefix + "-again",
        session_timeout_ms=6000,
    )
    for run, run_settings in enumerate((settings, again)):
        progress = tmp_path / f"progress-{run}"
        with running_sink(run_settings, kafka_bootstrap, progress):
            # 4 events + the 2 dead letters of each run so far, read back from images.dlq
            total = 4 + 2 * (run + 1)
            wait_for(
                lambda p=progress, n=total: read_progress(p, "sink").get("consumed", 0) >= n, 60
            )

    client = connect(settings.resolved_clickhouse_dsn)
    try:
        stored = client.query(
            "SELECT kafka_offset, type FROM control_events FINAL ORDER BY kafka_offset"
        ).result_rows
        letters = client.query(
            "SELECT original_topic, original_offset, error_class, message, processor, "
            "lower(hex(raw)) FROM dead_letters FINAL ORDER BY original_offset"
        ).result_rows
        unmerged = client.query("SELECT count() FROM dead_letters").result_rows[0][0]
    finally:
        client.close()
    assert stored == [(i, e["type"]) for i, e in enumerate(events)]  # the audit trail: all
    assert [row[:3] for row in letters] == [
        ("control.events", 1, "RefusedEvent"),
        ("control.events", 2, "RefusedEvent"),
    ]
    assert letters[0][3] == "weights[sky] 1e+300 is above 1e+06"
    assert letters[1][3] == "model.promoted of 'ghost@9': not a registered version"
    assert {row[4] for row in letters} == {"sink"}
    assert letters[0][5] == hostile_bytes.hex()  # the original message, whole
    # run 1 stored its 2 letters; run 2 stored them again and its own 2: 6 rows, 2 under FINAL
    assert unmerged == 6
