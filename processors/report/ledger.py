"""The ledger of a run: every item ingest took from its sources, accounted for exactly once.

``ledger: ingested N = scored S + cut C + dead letters D (+ in flight F)``, where

- **N, ingested**: the distinct items the sources handed to ingest, from the ingest counters
  (``progress/ingest.json``): distinct image ids published on ``images.raw`` (``images``) +
  distinct source failures published on ``images.dlq`` (``dead_letter_keys``: one per
  (source, key)) + the items the sources deliberately did not publish (``cut``, below).
- **S, scored**: distinct image ids with a served score in ClickHouse's ``scores`` (role
  ``production``, or a calibrated ``canary``: the decision that was served, the same rule as the
  sink's counts), whether or not the image row is stored.
- **C, cut**: items a source read and deliberately did not publish: the ZTF quality cuts
  (``min_rb``, ``min_drb``, ``max_nbad``), the sum of the sources' ``cut`` counters. Nothing
  published on ``images.raw`` is left unscored on purpose: a paused source is not drawn from
  (ingest holds, it does not cut), a pipeline pause holds the scorers until it lifts, and a run
  stopped by Ctrl-C drains what was ingested before it reports; so C is known only from the
  counters and ClickHouse cannot contradict it.
- **D, dead letters**: distinct source failures stored in ``dead_letters`` (origin
  ``source:<name>``, by (origin, key)) + distinct image ids dead-lettered from ``images.raw``
  (a scorer or the sink could not handle the image; keyed by image id).
- **F, in flight**: stored images with neither a served score nor an ``images.raw`` dead letter;
  for a run that has not finished (``finished=False``), also the ingested images and source
  failures not stored yet. After a finished run (every stage reported done) F is 0.

Invariant (balanced): N == S + C + D + F and none of the checks below fails. Each term is
measured on its own (ingest's counters on one side, ClickHouse's distinct ids on the other), so
a lost image makes the left side larger and a double count the right side, and the ledger names
the term that is off and by how much:

- a loss: ingested images neither stored nor dead-lettered (after a finished run), source
  failures ingest counted that are not stored, stored images still open after a finished run;
- a double count: images both scored and dead-lettered, scored ids never ingested as images,
  stored images or source failures that ingest did not count.

Ingest's distinct counts are exact while a duplicate arrives within its last 200,000 ids
(:mod:`processors.core.dedupe`); ClickHouse's are exact (``uniqExact``, which is what ``FINAL``
would give for these identities). For a run resumed from an earlier one, pass the ingest
counters summed over its runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

__all__ = ["Ledger", "compute_ledger", "ingest_terms"]

_SERVED = "(role = 'production' OR (role = 'canary' AND calibrated))"
_FAILED = "original_topic = 'images.raw' AND key IS NOT NULL"

LEDGER_SQL = f"""
SELECT
  (SELECT uniqExact(image_id) FROM images) AS stored,
  (SELECT uniqExact(image_id) FROM scores WHERE {_SERVED}) AS scored,
  (SELECT uniqExact(image_id) FROM scores
     WHERE {_SERVED} AND image_id NOT IN (SELECT image_id FROM images)) AS scored_unstored,
  (SELECT uniqExact(key) FROM dead_letters WHERE {_FAILED}) AS failed,
  (SELECT uniqExact(key) FROM dead_letters
     WHERE {_FAILED} AND key NOT IN (SELECT image_id FROM images)) AS failed_unstored,
  (SELECT uniqExact(key) FROM dead_letters
     WHERE {_FAILED} AND key IN (SELECT image_id FROM scores WHERE {_SERVED})) AS both,
  (SELECT uniqExact(image_id) FROM images
     WHERE image_id NOT IN (SELECT image_id FROM scores WHERE {_SERVED})
       AND image_id NOT IN (SELECT assumeNotNull(key) FROM dead_letters WHERE {_FAILED}))
     AS open,
  (SELECT uniqExact(tuple(original_topic, key)) FROM dead_letters
     WHERE startsWith(original_topic, 'source:')) AS source_failures
"""
"""Distinct ids per category; each count is measured on its own, none derived from another."""


@dataclass(frozen=True)
class Ledger:
    """The four terms and the right side's remainder, with what failed to add up.

    ``problems`` names each failed check with its size; empty and ``ingested == accounted``
    means balanced.
    """

    ingested: int
    scored: int
    cut: int
    dead_letters: int
    in_flight: int
    problems: tuple[str, ...] = ()

    @property
    def accounted(self) -> int:
        return self.scored + self.cut + self.dead_letters + self.in_flight

    @property
    def balanced(self) -> bool:
        return not self.problems and self.ingested == self.accounted

    def line(self) -> str:
        """``ledger: ingested N = scored S + cut C + dead letters D (+ in flight F)``, followed
        by ``  NOT BALANCED: ...`` (the difference and each failed check) when it is not."""
        text = (
            f"ledger: ingested {self.ingested} = scored {self.scored} + cut {self.cut}"
            f" + dead letters {self.dead_letters} (+ in flight {self.in_flight})"
        )
        if self.balanced:
            return text
        diff = self.ingested - self.accounted
        parts = []
        if diff:
            side = "ingested exceeds the terms" if diff > 0 else "the terms exceed ingested"
            parts.append(f"{side} by {abs(diff)}")
        return f"{text}  NOT BALANCED: " + "; ".join([*parts, *self.problems])


def ingest_terms(ingest: Mapping[str, Any]) -> tuple[int, int, int]:
    """(distinct images, distinct source failures, cut) from an ingest progress file's counts."""
    sources = ingest.get("sources") or {}
    cut = sum(int(counts.get("cut", 0)) for counts in sources.values())
    images = int(ingest.get("images", ingest.get("published", 0)))
    letters = int(ingest.get("dead_letter_keys", ingest.get("dead_letters", 0)))
    return images, letters, cut


def compute_ledger(client: Client, ingest: Mapping[str, Any], *, finished: bool) -> Ledger:
    """The ledger of the items counted in ``ingest`` (an ingest progress file's counts) against
    the warehouse ``client`` reads (the run's own ClickHouse: nothing else may be in it).

    ``finished``: every stage has handled everything ingested (``skyloop run`` reached its stop
    condition); then what is not stored or still open is lost, otherwise it is in flight.
    """
    images, letters, cut = ingest_terms(ingest)
    result = client.query(LEDGER_SQL)
    row = {
        name: int(value)
        for name, value in zip(result.column_names, result.result_rows[0], strict=True)
    }
    problems: list[str] = []
    # ingested images not yet stored anywhere (positive), or stored ones ingest never counted
    unstored = images - (row["stored"] + row["failed_unstored"])
    letters_unstored = letters - row["source_failures"]
    in_flight = row["open"]
    if finished:
        if unstored > 0:
            problems.append(
                f"in flight: {unstored} ingested images neither stored nor dead-lettered"
            )
        if letters_unstored > 0:
            problems.append(f"dead letters: {letters_unstored} source failures never stored")
        if row["open"]:
            problems.append(
                f"in flight: {row['open']} stored images neither scored nor dead-lettered "
                "after the run finished"
            )
    else:
        in_flight += max(unstored, 0) + max(letters_unstored, 0)
    if unstored < 0:
        problems.append(f"ingested: {-unstored} images stored that ingest did not count")
    if letters_unstored < 0:
        problems.append(
            f"dead letters: {-letters_unstored} source failures stored that ingest did not count"
        )
    if row["both"]:
        problems.append(
            f"scored + dead letters: {row['both']} images both scored and dead-lettered"
        )
    if row["scored_unstored"]:
        problems.append(f"scored: {row['scored_unstored']} scored images never stored as ingested")
    return Ledger(
        ingested=images + letters + cut,
        scored=row["scored"],
        cut=cut,
        dead_letters=row["source_failures"] + row["failed"],
        in_flight=in_flight,
        problems=tuple(problems),
    )
