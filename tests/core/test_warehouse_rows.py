"""Images read back from the warehouse are the images that were stored: pixels, position and
ground truth (its boxes included) through the sink's writer and a real chdb."""

from __future__ import annotations

from pathlib import Path

from processors.core.clickhouse import connect
from processors.core.warehouse_rows import ClickHouseRows, stored_images
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.sink.migrations import apply_migrations
from processors.sink.writer import ClickHouseWriter


def test_stored_images_read_back_as_they_were_stored(tmp_path: Path) -> None:
    sky = SyntheticSky(name="sky", seed=4, kind="difference", anomaly_rate=1.0)
    images = [to_record(sky.image(i)) for i in range(6)]
    assert any(i["truth"] and i["truth"]["boxes"] for i in images)  # boxes are exercised
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = connect(dsn)
    apply_migrations(client)
    ClickHouseWriter(client).insert("images.raw", [(r, 0, n) for n, r in enumerate(images)])
    client.close()
    rows = ClickHouseRows(dsn)
    try:
        wanted = [images[3]["image_id"], "f" * 64, images[0]["image_id"]]  # one never stored
        back = list(stored_images(rows, wanted))
    finally:
        rows.close()
    assert [b["image_id"] for b in back] == [wanted[0], wanted[2]]  # in the order asked
    for got, original in zip(back, (images[3], images[0]), strict=True):
        assert got["pixels"] == original["pixels"]
        assert (got["source"], got["width"], got["height"]) == (
            original["source"],
            original["width"],
            original["height"],
        )
        assert got["truth"] is not None and original["truth"] is not None
        assert got["truth"]["kind"] == original["truth"]["kind"]
        assert [(b["label"], b["x1"], b["y2"], b["confidence"]) for b in got["truth"]["boxes"]] == [
            (b["label"], b["x1"], b["y2"], 1.0) for b in original["truth"]["boxes"]
        ]
