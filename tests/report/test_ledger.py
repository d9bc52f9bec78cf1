"""The run ledger on crafted warehouse data: balanced, and every loss or double count named."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client

from processors.report.ledger import compute_ledger


def _images(client: Client, *ids: str) -> None:
    client.command(
        "INSERT INTO images (image_id, source) VALUES "
        + ", ".join(f"('{i}', 'synthetic')" for i in ids)
    )


def _scores(client: Client, *ids: str, role: str = "production", calibrated: int = 1) -> None:
    client.command(
        "INSERT INTO scores (image_id, source, model_version, role, calibrated) VALUES "
        + ", ".join(f"('{i}', 'synthetic', 'm1', '{role}', {calibrated})" for i in ids)
    )


def _letter(client: Client, topic: str, key: str, offset: int = -1) -> None:
    client.command(
        "INSERT INTO dead_letters (original_topic, original_partition, original_offset, key, "
        f"raw, error_class, processor) VALUES ('{topic}', -1, {offset}, '{key}', '{key}', "
        "'Broken', 'score')"
    )


def _ingest(images: int, letters: int = 0, cut: int = 0) -> dict[str, Any]:
    return {
        "images": images,
        "dead_letter_keys": letters,
        "sources": {"ztf": {"cut": cut, "cut.min_rb": cut}, "synthetic": {"published": images}},
    }


def _clean(client: Client) -> None:
    """Five images: four scored (one twice: a redelivery), one dead-lettered by the scorer;
    one source failure; two alerts cut."""
    _images(client, "a", "b", "c", "d", "e")
    _images(client, "a")  # a redelivered image row
    _scores(client, "a", "b", "c")
    _scores(client, "d", role="canary")
    _scores(client, "a")  # a redelivered score
    _scores(client, "e", role="shadow")  # a shadow's score is never the served one
    _letter(client, "images.raw", "e", offset=4)
    _letter(client, "source:ztf", "packet-7")


def test_a_clean_run_balances(client: Client) -> None:
    _clean(client)
    ledger = compute_ledger(client, _ingest(5, letters=1, cut=2), finished=True)
    assert ledger.balanced, ledger.line()
    assert ledger.line() == (
        "ledger: ingested 8 = scored 4 + cut 2 + dead letters 2 (+ in flight 0)"
    )


def test_an_unfinished_run_counts_what_is_open_in_flight(client: Client) -> None:
    _clean(client)
    _images(client, "f")  # stored, not scored yet
    # ingest counted two more images (f, g) and a source failure the sink has not stored yet
    ledger = compute_ledger(client, _ingest(7, letters=2, cut=2), finished=False)
    assert ledger.balanced, ledger.line()
    assert (ledger.ingested, ledger.in_flight) == (11, 3)


def test_a_lost_image_is_named(client: Client) -> None:
    _clean(client)
    # ingest counted a sixth image that was never stored nor dead-lettered
    ledger = compute_ledger(client, _ingest(6, letters=1, cut=2), finished=True)
    assert not ledger.balanced
    assert "ingested exceeds the terms by 1" in ledger.line()
    assert "1 ingested images neither stored nor dead-lettered" in ledger.line()
    # the same warehouse mid-run: the image is in flight, not lost
    assert compute_ledger(client, _ingest(6, letters=1, cut=2), finished=False).balanced


def test_a_lost_score_is_named(client: Client) -> None:
    _clean(client)
    _images(client, "f")  # stored, but its score never arrived, and the run says it finished
    ledger = compute_ledger(client, _ingest(6, letters=1, cut=2), finished=True)
    assert not ledger.balanced
    assert "1 stored images neither scored nor dead-lettered after the run finished" in (
        ledger.line()
    )


def test_a_double_count_is_named(client: Client) -> None:
    _clean(client)
    _scores(client, "e")  # e was dead-lettered and is now also scored
    ledger = compute_ledger(client, _ingest(5, letters=1, cut=2), finished=True)
    assert not ledger.balanced
    assert "the terms exceed ingested by 1" in ledger.line()
    assert "1 images both scored and dead-lettered" in ledger.line()


def test_scores_and_images_ingest_never_counted_are_named(client: Client) -> None:
    _clean(client)
    _scores(client, "zz")  # a score for an id that was never ingested
    _images(client, "yy")  # an image this run's ingest never counted
    _scores(client, "yy")
    ledger = compute_ledger(client, _ingest(5, letters=1, cut=2), finished=True)
    assert not ledger.balanced
    line = ledger.line()
    assert "the terms exceed ingested by 2" in line
    assert "1 scored images never stored as ingested" in line
    assert "1 images stored that ingest did not count" in line
