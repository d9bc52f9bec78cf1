"""The ZTF topic source against the embedded broker: every packet once, failures, commits."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.ztf import QualityCuts, ZtfTopicSource
from tests.ingest.conftest import MakeTopic, committed_offset

GARBAGE = b"\x00\x01 this is not an alert packet"


def _offset(item: SourceItem) -> str:
    assert isinstance(item, RawImage)
    return item.provenance["kafka_offset"]


def test_every_packet_arrives_once_and_garbage_fails(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    packets = sorted(ztf_alerts_dir.glob("*.avro"))
    values = [p.read_bytes() for p in packets] + [GARBAGE]
    topic, group = make_topic(values)
    source = ZtfTopicSource(
        kafka_bootstrap,
        topic,
        group,
        cutout="triplet",
        quality=QualityCuts(min_rb=0.05),
        max_messages=len(values),
        idle_timeout_s=10,
    )
    items = list(source)
    images = [i for i in items if isinstance(i, RawImage)]
    failures = [i for i in items if isinstance(i, SourceFailure)]
    readable = [i for i, p in enumerate(packets) if not p.name.startswith("unreadable")]
    cut = {i for i, p in enumerate(packets) if p.name.startswith("sim_vpre2_877")}  # rb == 0
    assert sorted(int(i.provenance["kafka_offset"]) for i in images) == sorted(set(readable) - cut)
    assert all(i.bands == 3 and i.provenance["kafka_topic"] == topic for i in images)
    by_offset = {int(i.provenance["kafka_offset"]): i for i in images}
    assert by_offset[readable[0]].provenance["candid"] == packets[0].name.split("_")[-1][:-5]
    unreadable = [i for i, p in enumerate(packets) if p.name.startswith("unreadable")]
    assert [f.key for f in failures] == [f"{topic}/0/{i}" for i in [*unreadable, len(packets)]]
    assert [f.error_class for f in failures] == ["UnreadablePacket"] * 2 + ["NotAvro"]
    assert [f.raw for f in failures] == [values[i] for i in unreadable] + [GARBAGE]
    stats = source.stats
    assert (stats.packets, stats.yielded, stats.cut_by_reason) == (
        len(values),
        len(images),
        {"min_rb": 3},
    )
    assert committed_offset(kafka_bootstrap, group, topic) == len(values)


def test_offsets_are_committed_only_for_taken_items(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    values = [p.read_bytes() for p in sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))]
    topic, group = make_topic(values)

    # on_next: item 1 is taken when item 2 is requested; item 2 is never confirmed
    on_next = ZtfTopicSource(kafka_bootstrap, topic, group, idle_timeout_s=10)
    stream = iter(on_next)
    assert [_offset(next(stream)), _offset(next(stream))] == ["0", "1"]
    stream.close()
    assert committed_offset(kafka_bootstrap, group, topic) == 1

    # manual: the same group resumes at the unconfirmed item (at least once), commits on demand
    manual = ZtfTopicSource(kafka_bootstrap, topic, group, commit="manual", idle_timeout_s=10)
    stream = iter(manual)
    assert [_offset(next(stream)) for _ in range(3)] == ["1", "2", "3"]
    manual.commit()
    assert committed_offset(kafka_bootstrap, group, topic) == 4
    next(stream)
    stream.close()
    assert committed_offset(kafka_bootstrap, group, topic) == 4


def test_manual_commit_with_deliver_commits_at_quiet_points_only_after_delivery(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    values = [p.read_bytes() for p in sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))]
    topic, group = make_topic(values)
    at_deliver: list[int] = []  # the group's committed offset each time deliver() is called

    # no commit() by the caller: the source commits the tail when the stream goes quiet
    source = ZtfTopicSource(
        kafka_bootstrap,
        topic,
        group,
        commit="manual",
        idle_timeout_s=3,
        deliver=lambda: at_deliver.append(committed_offset(kafka_bootstrap, group, topic)),
    )
    assert len(list(source)) == len(values)
    assert at_deliver and at_deliver[-1] < len(values)  # deliver() ran before the last commit
    assert committed_offset(kafka_bootstrap, group, topic) == len(values)


def test_failed_delivery_commits_nothing(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    values = [p.read_bytes() for p in sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))]
    topic, group = make_topic(values)

    def undelivered() -> None:
        raise RuntimeError("broker said no")

    source = ZtfTopicSource(
        kafka_bootstrap, topic, group, commit="manual", idle_timeout_s=3, deliver=undelivered
    )
    with pytest.raises(RuntimeError, match="broker said no"):
        list(source)
    assert committed_offset(kafka_bootstrap, group, topic) < 0
    # a later consumer of the group gets every message again (at least once)
    again = ZtfTopicSource(kafka_bootstrap, topic, group, idle_timeout_s=3)
    assert sorted(_offset(i) for i in again) == [str(i) for i in range(len(values))]


def test_endless_unless_bounded(kafka_bootstrap: str) -> None:
    assert ZtfTopicSource(kafka_bootstrap, "t", "g").endless
    assert not ZtfTopicSource(kafka_bootstrap, "t", "g", idle_timeout_s=1).endless
    assert not ZtfTopicSource(kafka_bootstrap, "t", "g", max_messages=1).endless
