"""Source specs as the ingest processor builds them: finiteness, parts, counters, commit mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.ingest.sources import Interleaved, source_from_spec
from processors.ingest.sources.base import is_endless, source_counters, source_parts
from processors.ingest.sources.items import RawImage, SourceItem
from processors.ingest.synthetic.hubble import HubbleDeepField
from processors.ingest.ztf import ZtfFileSource, ZtfTopicSource


@pytest.mark.parametrize(
    ("spec", "endless"),
    [
        ("synthetic", True),
        ("hubble", True),
        ("ztf:{dir}", False),
        ("ztf:{dir}?cutout=triplet", False),
        ("ztf:{dir}?watch=true", True),
        ("ztf:kafka://127.0.0.1:9/alerts", True),
        ("ztf:kafka://127.0.0.1:9/alerts?idle_timeout_s=5", False),
        ("ztf:kafka://127.0.0.1:9/alerts?max_messages=10", False),
    ],
)
def test_a_spec_says_whether_it_ends(spec: str, endless: bool, tmp_path: Path) -> None:
    assert is_endless(source_from_spec(spec.format(dir=tmp_path))) is endless


def test_unknown_sources_are_taken_as_endless() -> None:
    class Plain:
        name = "plain"

        def __iter__(self) -> Iterator[SourceItem]:
            return iter(())

    assert is_endless(Plain())


def test_interleaved_is_endless_when_one_part_is(tmp_path: Path) -> None:
    finite = source_from_spec(f"ztf:{tmp_path}")
    assert not is_endless(Interleaved([finite, source_from_spec(f"ztf:{tmp_path}?name=b")]))
    mixed = Interleaved([finite, Interleaved([source_from_spec("synthetic")])])
    assert is_endless(mixed) and mixed.endless
    assert [p.name for p in source_parts(mixed)] == ["ztf", "synthetic"]


def test_kafka_specs_commit_after_delivery_and_follow_the_stop_event(tmp_path: Path) -> None:
    stop = threading.Event()
    topic = source_from_spec("ztf:kafka://127.0.0.1:9/alerts", stop=stop)
    assert isinstance(topic, ZtfTopicSource)
    assert (topic.commit_mode, topic.stop) == ("manual", stop)
    on_next = source_from_spec("ztf:kafka://127.0.0.1:9/alerts?commit=on_next")
    assert isinstance(on_next, ZtfTopicSource) and on_next.commit_mode == "on_next"
    files = source_from_spec(f"ztf:{tmp_path}?watch=true", stop=stop)
    assert isinstance(files, ZtfFileSource) and files.stop is stop


def test_counters_of_every_part_by_name(ztf_alerts_dir: Path) -> None:
    a = source_from_spec(f"ztf:{ztf_alerts_dir}/ZTF18abdqak*.avro")
    b = source_from_spec(f"ztf:{ztf_alerts_dir}/unreadable_*.avro")
    c = source_from_spec(f"ztf:{ztf_alerts_dir}/sim_*.avro?name=sim&min_rb=0.05")
    both = Interleaved([a, b, c, HubbleDeepField(limit=2)])
    items = list(both)
    assert sum(isinstance(i, RawImage) for i in items) == 6 + 3 + 2
    counters = source_counters(both)
    assert set(counters) == {"ztf", "sim"}  # hubble keeps no counters; a and b share a name
    ztf = counters["ztf"]
    assert (ztf["packets"], ztf["yielded"], ztf["failed.UnreadablePacket"]) == (8, 6, 2)
    assert counters["sim"]["cut.min_rb"] == 3  # the sim_vpre2_877* packets have rb == 0
