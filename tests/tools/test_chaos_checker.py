"""The chaos checker catches what it claims to: a duplicate, an image served twice, a loss.

Score records go through the real Avro codec and the tap's decoder; each test injects one fault
into an otherwise clean run's data and sees the checker count it (and a clean run count none).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from processors.core.codec import default_codec
from tools.chaos.checker import Stored, Window, check
from tools.chaos.tap import Seen, decode

T0 = 1_800_000_000_000  # ms


def _score(
    image: str,
    *,
    version: str = "m1",
    role: str = "production",
    flagged: bool = False,
    ensemble: float = 0.3,
    control_offset: int = 0,
) -> dict[str, Any]:
    return {
        "image_id": image,
        "source": "synthetic",
        "model_version": version,
        "backbone": "efficientnet_lite0",
        "role": role,
        "detectors": [],
        "ensemble_score": ensemble,
        "votes_for": 3 if flagged else 0,
        "votes_needed": 2,
        "is_candidate": flagged,
        "calibrated": True,
        "batch_size": 16,
        "latency_ms": 5.0,
        "control_offset": control_offset,
        "scored_at": datetime(2027, 1, 1, tzinfo=UTC),
        "embedding": None,
    }


def _scored(offset: int, at_ms: int, **kwargs: Any) -> Seen:
    value = default_codec().encode(_score(**kwargs), "skyloop.ScoreRecord")
    return decode("scores", 0, offset, at_ms, kwargs["image"].encode(), value)


def clean_run(n: int = 6) -> tuple[list[Seen], Stored]:
    seen: list[Seen] = []
    stored = Stored()
    for i in range(n):
        image = f"img{i}"
        at = T0 + 1000 * i
        seen.append(Seen("images.raw", 0, i, at, image, (image,)))
        seen.append(
            _scored(i, at + 100, image=image, flagged=i == 0, ensemble=0.9 if i == 0 else 0.3)
        )
        stored.images.add(image)
        stored.production[image] = {"m1"}
        stored.production_rows[image] = 1
        stored.positions |= {("images.raw", 0, i), ("scores", 0, i)}
    seen.append(Seen("candidates", 0, 0, T0 + 200, "img0", ("img0", "m1"), (0.9, 0)))
    stored.candidates.add(("img0", "m1"))
    stored.positions.add(("candidates", 0, 0))
    return seen, stored


LEDGER = {"images": 6, "published": 6}


def test_a_clean_run_has_no_duplicates_and_no_losses() -> None:
    seen, stored = clean_run()
    verdict = check(seen, [], LEDGER, stored)
    assert verdict.clean, verdict.details
    assert (verdict.duplicates, verdict.losses, verdict.redelivered) == (0, 0, 0)
    assert verdict.images_in == verdict.images_out == 6


def test_an_identical_copy_with_no_disruption_is_a_duplicate() -> None:
    # the case the FINAL-based count could never see: the same record produced twice
    seen, stored = clean_run()
    copy = replace(seen[3], offset=99, produced_ms=seen[3].produced_ms + 500)
    verdict = check([*seen, copy], [], LEDGER, stored)
    assert verdict.duplicates == 1 and not verdict.clean
    assert "duplicate on scores" in verdict.details[0]


def test_a_copy_across_a_kill_of_its_producer_is_a_redelivery() -> None:
    seen, stored = clean_run()
    first = seen[3]
    copy = replace(first, offset=99, produced_ms=first.produced_ms + 8000)
    kill = Window("score", first.produced_ms / 1000 + 1, first.produced_ms / 1000 + 40, "kill")
    verdict = check([*seen, copy], [kill], LEDGER, stored)
    assert verdict.clean and verdict.redelivered == 1 and verdict.rescored == 0
    # the kill of another worker explains nothing
    other = replace(kill, worker="sink")
    assert check([*seen, copy], [other], LEDGER, stored).duplicates == 1
    # a redelivery rescored under a newer control state is reported apart
    rescored = _scored(99, first.produced_ms + 8000, image="img1", control_offset=7)
    verdict = check([*seen, rescored], [kill], LEDGER, stored)
    assert verdict.clean and verdict.rescored == 1


def test_an_image_served_twice_is_a_duplicate_on_the_topic_and_in_the_store() -> None:
    seen, stored = clean_run()
    other = _scored(50, T0 + 9000, image="img2", version="m2")
    assert check([*seen, other], [], LEDGER, stored).served_twice == 1
    stored.production_rows["img3"] = 2  # two rows under FINAL
    verdict = check(seen, [], LEDGER, stored)
    assert verdict.served_twice == 1 and verdict.duplicates == 1


def test_a_source_repeat_that_ingest_counted_is_expected() -> None:
    seen, stored = clean_run()
    repeat = replace(seen[2], offset=70, produced_ms=T0 + 20_000)
    rescore = replace(seen[3], offset=71, produced_ms=T0 + 20_100)
    ledger = {"images": 6, "published": 7}
    assert check([*seen, repeat, rescore], [], ledger, stored).clean
    # uncounted by ingest: the image copy is the duplicate (its rescoring follows from it)
    assert check([*seen, repeat, rescore], [], LEDGER, stored).duplicates == 1


def test_losses_against_the_ledger() -> None:
    seen, stored = clean_run()
    # a score lost on the topic
    verdict = check(
        [s for s in seen if s.identity != ("img4", "m1", "production")], [], LEDGER, stored
    )
    assert verdict.losses == 1 and "no production score" in verdict.details[0]
    # a score lost by the store
    del stored.production["img5"]
    verdict = check(seen, [], LEDGER, stored)
    assert verdict.losses == 1 and verdict.images_out == 5
    stored.production["img5"] = {"m1"}
    # a candidate lost: the flagged image has none
    verdict = check([s for s in seen if s.topic != "candidates"], [], LEDGER, stored)
    assert verdict.losses == 1 and "no candidate" in verdict.details[0]
    # ingest counted more images than reached the topic
    assert check(seen, [], {"images": 8, "published": 8}, stored).losses == 2
    # a dead-lettered image is accounted for, not lost
    dead = Seen("images.dlq", 0, 0, T0, "img4", ("images.raw", 0, 4, "score"))
    without = [s for s in seen if s.identity != ("img4", "m1", "production")]
    verdict = check([*without, dead], [], LEDGER, stored)
    assert verdict.losses == 0 and verdict.dead_lettered == 1


def test_an_incomplete_tap_fails_and_poison_is_counted() -> None:
    seen, stored = clean_run()
    verdict = check(seen[2:], [], LEDGER, replace(stored))
    assert verdict.tap_missing >= 2 and not verdict.clean
    poison = decode("scores", 1, 0, T0, b"chaos-scores", b"\x00not avro")
    letter = {
        "original_topic": "scores",
        "partition": 1,
        "offset": 0,
        "key": b"chaos-scores",
        "raw": b"\x00not avro",
        "error_class": "CorruptMessageError",
        "message": "not Avro",
        "processor": "detect",
        "at": datetime(2027, 1, 1, tzinfo=UTC),
    }
    value = default_codec().encode(letter, "skyloop.DeadLetter")
    dead = decode("images.dlq", 1, 0, T0, b"chaos-scores", value)
    assert dead.identity == ("scores", 1, 0, "detect")
    verdict = check([*seen, poison, dead], [], LEDGER, stored)
    assert verdict.clean and verdict.poison == Counter({"scores": 1})
