"""Reading real ZTF packets of every schema version into one view (ingest/ztf/packets)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from astropy.time import Time

from processors.ingest.ztf.packets import (
    KNOWN_SCHEMA_VERSIONS,
    AlertPacketError,
    AlertReader,
    ZtfAlert,
    jd_to_utc,
    read_alerts,
)

RewriteFn = Callable[..., bytes]
FirstRecord = Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]
NAME = re.compile(r"^(?P<obj>ZTF\w+|sim)_v(?P<vsn>[\w.]+)_(?P<candid>\d+)\.avro$")


def _one(path: Path) -> ZtfAlert:
    alerts = list(read_alerts(path.read_bytes()))
    assert len(alerts) == 1
    return alerts[0]


def test_every_packet_reads_into_the_view(
    ztf_alerts_dir: Path, ztf_packet_name: str, first_record: FirstRecord
) -> None:
    name = ztf_packet_name
    match = NAME.match(name)
    assert match, name
    alert = _one(ztf_alerts_dir / name)
    _, raw = first_record(ztf_alerts_dir / name)
    cand = raw["candidate"]

    vsn = match["vsn"]
    assert alert.schemavsn == (None if vsn == "pre2" else vsn)
    assert alert.schema_label == ("pre-2.0" if vsn == "pre2" else vsn)
    if match["obj"] == "sim":
        assert alert.object_id is None and alert.candid == -int(match["candid"])
        assert alert.extra["alertId"] == str(raw["alertId"])
    else:
        assert alert.object_id == match["obj"] and alert.candid == int(match["candid"])
    assert (alert.jd, alert.ra, alert.dec) == (cand["jd"], cand["ra"], cand["dec"])
    assert alert.observed_at == jd_to_utc(cand["jd"])
    assert (alert.magpsf, alert.rb, alert.fid, alert.nbad) == (
        cand["magpsf"],
        cand["rb"],
        cand["fid"],
        cand["nbad"],
    )
    assert alert.drb == cand.get("drb")  # only 3.3 and later carry drb
    if vsn in {"3.3", "3.5"}:
        assert alert.drb is not None and 0.0 <= alert.drb <= 1.0
    assert set(alert.cutouts) == {"science", "template", "difference"}
    assert alert.cutouts["difference"] == raw["cutoutDifference"]["stampData"]
    assert alert.extra["isdiffpos"] == str(cand["isdiffpos"])


def test_the_versions_present_are_the_known_ones(ztf_alerts_dir: Path) -> None:
    found = {_one(p).schemavsn for p in ztf_alerts_dir.glob("*.avro") if NAME.match(p.name)}
    assert found == {None, *KNOWN_SCHEMA_VERSIONS}


def test_one_object_across_five_schema_versions_agrees(ztf_alerts_dir: Path) -> None:
    views = {a.schema_label: a for a in map(_one, sorted(ztf_alerts_dir.glob("ZTF17aaajnnn_v*")))}
    assert sorted(views) == ["2.0", "3.0", "3.1", "3.2", "3.3"]
    v3 = [views[v] for v in ("3.0", "3.1", "3.2", "3.3")]
    for view in v3[1:]:
        for attr in ("candid", "ra", "dec", "jd", "observed_at", "magpsf", "rb", "fid", "cutouts"):
            assert getattr(view, attr) == getattr(v3[0], attr), attr
    # The 2.0 packet is an earlier processing of the same exposure: same object and time, its
    # own candid, and a position that agrees to a few milliarcseconds.
    old = views["2.0"]
    assert old.object_id == v3[0].object_id and old.jd == v3[0].jd
    assert old.candid != v3[0].candid
    assert abs(old.ra - v3[0].ra) * 3600 < 0.01 and abs(old.dec - v3[0].dec) * 3600 < 0.05
    assert [views[v].drb is None for v in sorted(views)] == [True, True, True, True, False]
    assert "exptime" not in views["3.0"].extra and views["3.1"].extra["exptime"] == "30.0"


def test_jd_to_utc_is_exact_and_agrees_with_astropy() -> None:
    assert jd_to_utc(2440587.5) == datetime(1970, 1, 1, tzinfo=UTC)
    assert jd_to_utc(2451545.0) == datetime(2000, 1, 1, 12, tzinfo=UTC)
    for jd in (2458151.0226852, 2459415.8825347, 2457581.80414):
        ours = jd_to_utc(jd)
        theirs = Time(jd, format="jd", scale="utc").to_datetime(timezone=UTC)
        assert ours.tzinfo is UTC
        assert abs((ours - theirs).total_seconds()) < 1e-3


def test_the_3_5_packet_values(ztf_alerts_dir: Path) -> None:
    alert = _one(ztf_alerts_dir / "ZTF18aaxjdyr_v3.5_1661382530015060001.avro")
    assert alert.candid == 1661382530015060001
    assert (alert.ra, alert.dec) == (296.8679389, 24.08881)
    assert alert.observed_at.isoformat(timespec="milliseconds") == "2021-07-20T09:10:50.998+00:00"
    assert alert.programid == 1 and alert.fid == 2
    assert alert.extra["publisher"].startswith("ZTF")
    assert alert.extra["rbversion"] and alert.extra["drbversion"]


def _future_schema(schema: dict[str, Any]) -> None:
    """Schema 9.9: drb removed, a new candidate field, rb turned into a string."""
    candidate = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    candidate["fields"] = [f for f in candidate["fields"] if f["name"] != "drb"]
    candidate["fields"].append({"name": "newscore", "type": ["null", "float"], "default": None})
    for f in candidate["fields"]:
        if f["name"] == "rb":
            f["type"] = ["null", "string"]


def _as_future(record: dict[str, Any]) -> None:
    record["schemavsn"] = "9.9"
    record["candidate"].pop("drb")
    record["candidate"]["newscore"] = 0.5
    record["candidate"]["rb"] = "high"


def test_an_unknown_version_is_read_by_name_with_one_warning(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn, caplog: pytest.LogCaptureFixture
) -> None:
    data = rewrite_packet(
        ztf_alerts_dir / "ZTF18aaxjdyr_v3.5_1661382530015060001.avro",
        _as_future,
        _as_future,
        schema=_future_schema,
    )
    with caplog.at_level(logging.WARNING, logger="processors.ingest.ztf.packets"):
        alerts = list(AlertReader().read(data))
    assert len(alerts) == 2 and all(isinstance(a, ZtfAlert) for a in alerts)
    alert = alerts[0]
    assert isinstance(alert, ZtfAlert)
    assert alert.schemavsn == "9.9" and alert.candid == 1661382530015060001
    assert alert.drb is None and alert.rb is None  # missing, and no longer a number
    assert alert.ra == 296.8679389 and set(alert.cutouts) == {"science", "template", "difference"}
    version_warnings = [r for r in caplog.records if "'9.9'" in r.getMessage()]
    assert len(version_warnings) == 1, "one warning per version, not per alert"
    assert any("'rb'" in r.getMessage() for r in caplog.records)


def test_a_bad_record_fails_alone_in_a_multi_alert_container(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn
) -> None:
    def bad_position(record: dict[str, Any]) -> None:
        record["candidate"]["ra"] = 400.0

    def renumber(record: dict[str, Any]) -> None:
        record["candid"] += 1

    path = ztf_alerts_dir / "ZTF18abdqakb_v3.1_472263571115115011.avro"
    items = list(AlertReader().read(rewrite_packet(path, lambda r: None, bad_position, renumber)))
    assert [type(i).__name__ for i in items] == ["ZtfAlert", "AlertPacketError", "ZtfAlert"]
    assert isinstance(items[1], AlertPacketError) and items[1].reason == "BadAlert"
    assert "ra=400.0" in str(items[1])
    assert isinstance(items[2], ZtfAlert) and items[2].candid == 472263571115115012
    with pytest.raises(AlertPacketError):
        list(read_alerts(rewrite_packet(path, bad_position)))


def test_missing_cutouts_are_absent_from_the_view(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn
) -> None:
    def drop_template(record: dict[str, Any]) -> None:
        record["cutoutTemplate"] = None

    path = ztf_alerts_dir / "ZTF18aaxjlwz_v2.0_472263571115095005.avro"
    (alert,) = read_alerts(rewrite_packet(path, drop_template))
    assert set(alert.cutouts) == {"science", "difference"}


@pytest.mark.parametrize(
    ("damage", "reason", "words"),
    [
        (lambda raw: raw[: len(raw) // 2], "TruncatedPacket", "ends inside"),
        (lambda raw: raw[:-1], "TruncatedPacket", "ends inside"),
        (lambda raw: raw[:200], "NotAvro", "not an Avro"),
        (lambda raw: b"", "NotAvro", "not an Avro"),
        (lambda raw: b"this is not an alert packet", "NotAvro", "not an Avro"),
        (lambda raw: b"Obj\x01" + b"\x00" * 64, "NotAvro", "avro.schema"),
    ],
    ids=["half", "last-byte", "header-only", "empty", "text", "bare-magic"],
)
def test_damaged_containers_raise_with_a_reason(
    ztf_alerts_dir: Path, damage: Any, reason: str, words: str
) -> None:
    raw = (ztf_alerts_dir / "ZTF17aaajnnn_v3.3_472263571115115000.avro").read_bytes()
    with pytest.raises(AlertPacketError) as err:
        list(read_alerts(damage(raw)))
    assert err.value.reason == reason and words in str(err.value)


@pytest.mark.parametrize(
    "name", ["unreadable_87704463155000.avro", "unreadable_87704463155001.avro"]
)
def test_unreadable_shared_packets_are_rejected(ztf_alerts_dir: Path, name: str) -> None:
    with pytest.raises(AlertPacketError) as err:
        list(read_alerts((ztf_alerts_dir / name).read_bytes()))
    assert err.value.reason == "UnreadablePacket"
    assert "writer schema" in str(err.value) and "UnicodeDecodeError" in str(err.value)
