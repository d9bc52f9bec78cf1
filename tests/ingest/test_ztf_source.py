"""The ZTF file source, quality cuts and counters, watch mode, and the spec factory."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processors.core.exceptions import ConfigError
from processors.ingest.sources.base import ImageSource
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.ztf import (
    QualityCuts,
    ZtfFileSource,
    ZtfStats,
    ZtfTopicSource,
    ztf_source_from_spec,
)

RewriteFn = Callable[..., bytes]


def _balanced(stats: ZtfStats) -> bool:
    alert_failures = stats.failed - stats.packets_failed
    return stats.read == stats.yielded + stats.cut + alert_failures


def test_a_directory_in_name_order_with_failures_kept(ztf_alerts_dir: Path) -> None:
    source: ImageSource = ZtfFileSource(ztf_alerts_dir, name="ztf-dir")
    items = list(source)
    packets = sorted(ztf_alerts_dir.glob("*.avro"))
    assert [
        i.provenance["packet"] if isinstance(i, RawImage) else Path(i.key).name for i in items
    ] == [p.name for p in packets]
    failures = [i for i in items if isinstance(i, SourceFailure)]
    assert [Path(f.key).name for f in failures] == [
        "unreadable_87704463155000.avro",
        "unreadable_87704463155001.avro",
    ]
    for failure in failures:
        assert failure.source == "ztf-dir" and failure.error_class == "UnreadablePacket"
        assert failure.raw == Path(failure.key).read_bytes()
    stats = source.stats  # type: ignore[attr-defined]
    assert (stats.packets, stats.read, stats.yielded, stats.failed) == (len(packets), 25, 25, 2)
    assert stats.snapshot()["failed.UnreadablePacket"] == 2 and _balanced(stats)
    assert items == list(source), "a second pass yields the same items"


def test_a_glob_and_a_single_file(ztf_alerts_dir: Path) -> None:
    items = list(ZtfFileSource(str(ztf_alerts_dir / "ZTF17aaajnnn_v3.*.avro"), cutout="triplet"))
    assert [i.provenance["schemavsn"] for i in items if isinstance(i, RawImage)] == [
        "3.0",
        "3.1",
        "3.2",
        "3.3",
    ]
    assert all(isinstance(i, RawImage) and i.bands == 3 for i in items)
    (one,) = ZtfFileSource(ztf_alerts_dir / "ZTF18aaxjdyr_v3.5_1661382530015060001.avro")
    assert isinstance(one, RawImage) and one.provenance["candid"] == "1661382530015060001"


def test_quality_cuts_are_counted_never_silent(
    ztf_alerts_dir: Path, first_record: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    readable = [p for p in sorted(ztf_alerts_dir.glob("*.avro")) if "unreadable" not in p.name]
    expected_rb_cuts = sum(first_record(p)[1]["candidate"]["rb"] < 0.5 for p in readable)
    assert 0 < expected_rb_cuts < len(readable)
    source = ZtfFileSource(ztf_alerts_dir, quality=QualityCuts(min_rb=0.5, min_drb=0.9))
    images = [i for i in source if isinstance(i, RawImage)]
    # of those with rb >= 0.5, only the 3.3/3.5 packets carry drb; the others lack it
    assert {(i.provenance["object_id"], i.provenance["schemavsn"]) for i in images} == {
        ("ZTF17aaajnnn", "3.3"),
        ("ZTF18aaxjdyr", "3.5"),
    }
    assert all(
        float(i.provenance["rb"]) >= 0.5 and float(i.provenance["drb"]) >= 0.9 for i in images
    )
    stats = source.stats
    assert stats.cut_by_reason["min_rb"] == expected_rb_cuts
    assert stats.cut_by_reason["min_drb:missing"] == len(readable) - expected_rb_cuts - 2
    assert stats.yielded == 2 and _balanced(stats)


def test_max_nbad_cut(ztf_alerts_dir: Path, rewrite_packet: RewriteFn, tmp_path: Path) -> None:
    def nbad(n: int) -> Any:
        return lambda record: record["candidate"].update(nbad=n)

    path = ztf_alerts_dir / "ZTF18aaxjdyr_v3.5_1661382530015060001.avro"
    (tmp_path / "three.avro").write_bytes(rewrite_packet(path, nbad(0), nbad(3), nbad(1)))
    clean = ZtfFileSource(tmp_path, quality=QualityCuts(max_nbad=0))
    assert [i.provenance["nbad"] for i in clean if isinstance(i, RawImage)] == ["0"]
    assert clean.stats.cut_by_reason == {"max_nbad": 2} and clean.stats.read == 3
    assert sum(isinstance(i, RawImage) for i in ZtfFileSource(tmp_path)) == 3


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"min_rb": 1.5}, "min_rb"), ({"min_drb": -0.1}, "min_drb"), ({"max_nbad": -1}, "max_nbad")],
)
def test_bad_quality_cuts_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        QualityCuts(**kwargs)


def test_alert_level_failures_carry_the_packet(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn, tmp_path: Path
) -> None:
    def no_difference(record: dict[str, Any]) -> None:
        record["cutoutDifference"] = None

    path = ztf_alerts_dir / "ZTF18aakscsl_v2.0_472263571115095002.avro"
    data = rewrite_packet(path, lambda r: None, no_difference)
    (tmp_path / "pair.avro").write_bytes(data)
    (tmp_path / "truncated.avro").write_bytes(path.read_bytes()[:-100])
    (tmp_path / "text.avro").write_bytes(b"not avro")
    source = ZtfFileSource(tmp_path)
    items = list(source)
    assert [type(i).__name__ for i in items] == ["RawImage", "SourceFailure"] + [
        "SourceFailure"
    ] * 2
    missing, text, truncated = items[1:]
    assert isinstance(missing, SourceFailure) and missing.error_class == "MissingCutout"
    assert missing.key.endswith("pair.avro#472263571115095002") and missing.raw == data
    assert isinstance(text, SourceFailure) and text.error_class == "NotAvro"
    assert isinstance(truncated, SourceFailure) and truncated.error_class == "TruncatedPacket"
    assert source.stats.packets_failed == 2 and _balanced(source.stats)


def _collect(source: ZtfFileSource, out: list[SourceItem]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.extend(source), daemon=True)
    thread.start()
    return thread


def _wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_watch_reads_new_files_once_until_stopped(ztf_alerts_dir: Path, tmp_path: Path) -> None:
    packets = sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))
    assert len(packets) == 6
    shutil.copy(packets[0], tmp_path)
    stop = threading.Event()
    source = ZtfFileSource(tmp_path, watch=True, poll_interval_s=0.05, stop=stop)
    items: list[SourceItem] = []
    thread = _collect(source, items)
    _wait_for(lambda: len(items) == 1)
    for packet in packets[1:3]:
        shutil.copy(packet, tmp_path)
    (tmp_path / "ignored.txt").write_text("not a packet")
    _wait_for(lambda: len(items) == 3)
    # write-then-rename, as a writer should
    for packet in packets[3:]:
        shutil.copy(packet, tmp_path / (packet.name + ".part"))
        (tmp_path / (packet.name + ".part")).rename(tmp_path / packet.name)
    _wait_for(lambda: len(items) == 6)
    time.sleep(0.2)  # several more polls: nothing is read twice
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the stop event ends the watch"
    assert [i.provenance["packet"] for i in items if isinstance(i, RawImage)] == [
        p.name for p in packets
    ]
    assert source.stats.packets == 6


def test_watch_stops_while_idle(tmp_path: Path) -> None:
    stop = threading.Event()
    source = ZtfFileSource(tmp_path, watch=True, poll_interval_s=30, stop=stop)
    items: list[SourceItem] = []
    thread = _collect(source, items)
    time.sleep(0.1)
    started = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - started < 2 and items == []


def test_spec_for_files(ztf_alerts_dir: Path) -> None:
    source = ztf_source_from_spec(f"ztf:{ztf_alerts_dir}")
    assert isinstance(source, ZtfFileSource) and source.name == "ztf" and not source.watch
    stop = threading.Event()
    spec = (
        f"ztf:{ztf_alerts_dir}?cutout=triplet&min_rb=0.5&max_nbad=0&watch=true"
        "&poll_interval_s=0.5&name=ztf-north"
    )
    source = ztf_source_from_spec(spec, stop=stop, quality=QualityCuts(min_drb=0.8))
    assert isinstance(source, ZtfFileSource)
    assert (source.name, source.watch, source.poll_interval_s, source.stop) == (
        "ztf-north",
        True,
        0.5,
        stop,
    )
    assert source._items.quality == QualityCuts(min_rb=0.5, min_drb=0.8, max_nbad=0)
    assert source._items.cutout == "triplet"
    globbed = ztf_source_from_spec(f"ztf:{ztf_alerts_dir}/ZTF17aaajnnn_v3.?_*.avro?cutout=science")
    assert sum(1 for _ in globbed) == 4


def test_spec_for_a_topic() -> None:
    source = ztf_source_from_spec(
        "ztf:kafka://127.0.0.1:9092,127.0.0.1:9093/ztf_public?max_messages=10&idle_timeout_s=2.5"
        "&commit=manual&min_rb=0.65"
    )
    assert isinstance(source, ZtfTopicSource)
    assert source.topic == "ztf_public" and source.max_messages == 10
    assert source.idle_timeout_s == 2.5 and source.commit_mode == "manual"
    assert source._config["bootstrap.servers"] == "127.0.0.1:9092,127.0.0.1:9093"
    assert source._config["group.id"] == "skyloop-ingest-ztf"
    assert source._config["session.timeout.ms"] == 6000


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ztf:{dir}?cutout=rgb", "cutout='rgb': accepted values are difference, science"),
        ("ztf:{dir}?min_rb=high", "min_rb='high': accepted values are floats in [0.0, 1.0]"),
        ("ztf:{dir}?min_rb=2", "min_rb='2'"),
        ("ztf:{dir}?max_nbad=0.5", "max_nbad='0.5': accepted values are ints >= 0"),
        ("ztf:{dir}?watch=maybe", "watch='maybe': accepted values are true, false"),
        ("ztf:{dir}?poll_interval_s=0", "poll_interval_s='0'"),
        ("ztf:{dir}?colour=red", "'colour' is unknown for a ZTF file source; accepted keys are"),
        ("ztf:{dir}?group_id=g", "'group_id' is unknown for a ZTF file source"),
        ("ztf:{dir}?cutout=science&cutout=triplet", "'cutout' is given twice"),
        ("ztf:{dir}/no-such-dir", "does not exist"),
        ("ztf:", "empty"),
        ("hubble:{dir}", "starts with 'ztf:'"),
        ("ztf:kafka://host:9092?max_messages=1", "kafka://HOST:PORT"),
        ("ztf:kafka://host:9092/t?max_messages=0", "max_messages='0'"),
        ("ztf:kafka://host:9092/t?commit=never", "commit='never': accepted values are on_next"),
        ("ztf:kafka://host:9092/t?watch=true", "'watch' is unknown for a ZTF kafka source"),
    ],
)
def test_bad_specs_name_the_key_and_accepted_values(tmp_path: Path, spec: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        ztf_source_from_spec(spec.format(dir=tmp_path))
    assert words in str(err.value)
