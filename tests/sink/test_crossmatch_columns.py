"""Cross-match magnitude and kind reach ClickHouse as arrays parallel to ``crossmatches``."""

from __future__ import annotations

from types import SimpleNamespace

from processors.core.clickhouse import Client
from processors.sink.writer import ClickHouseWriter


def test_magnitudes_and_kinds_line_up_with_their_matches(
    client: Client, make: SimpleNamespace
) -> None:
    record = make.candidate("img-1")
    record["crossmatches"] = [
        {
            "catalog": "ztf:ps1",
            "object_id": "42",
            "separation_arcsec": 0.3,
            "magnitude": 17.5,
            "kind": "star",
        },
        {
            "catalog": "ztf:ss",
            "object_id": "1234",
            "separation_arcsec": 2.5,
            "magnitude": None,
            "kind": None,
        },
        {
            "catalog": "gaia",
            "object_id": "HIP 1",
            "separation_arcsec": 40.0,
            "magnitude": 8.5,
            "kind": "star",
        },
    ]
    assert ClickHouseWriter(client).insert("candidates", [(record, 0, 1)]) == 1
    rows = client.query(
        "SELECT m.catalog, mag, kind FROM candidates FINAL "
        "ARRAY JOIN crossmatches AS m, crossmatch_magnitudes AS mag, crossmatch_kinds AS kind"
    ).result_rows
    assert rows == [("ztf:ps1", 17.5, "star"), ("ztf:ss", None, None), ("gaia", 8.5, "star")]
    bright = client.command(
        "SELECT countIf(arrayExists((k, g) -> k = 'star' AND g <= 14, crossmatch_kinds, "
        "crossmatch_magnitudes)) FROM candidates FINAL"
    )
    assert int(bright) == 1  # type: ignore[arg-type]
