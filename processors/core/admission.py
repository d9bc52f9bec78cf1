"""What a batch loop accepts from outside producers: keyless messages, and no oversized ones.

Topics such as ``images.raw`` and ``control.events`` may be written by producers outside the
pipeline (another ingest, an operator's script). Two of their habits are handled here, for
every batch loop (:class:`processors.core.runner.Runner`):

- **Keyless messages are processed like keyed ones.** No processor takes identity or routing
  from an input message's key: an image is identified by the ``image_id`` in its record, a
  control event by its ``event_id`` and its subject, and every output is keyed and partitioned
  by what the record says (scores by image id on the source's partition). So the key a
  keyless record lacks is derived where an output needs one, from the record; a keyless record
  that cannot be decoded is dead-lettered like a keyed one (its dead letter has no key and is
  identified by its origin: topic, partition, offset). What an outside producer gives up by
  not keying: per-source order, which holds only for records on their source's partition.
- **Oversized messages are dead-lettered before they are processed.** A message whose value is
  larger than ``kafka.max_message_bytes`` (by default what the pipeline's own producers can
  write) becomes a dead letter ``OversizedMessage`` with its size and the limit, carrying the
  value's first bytes (:func:`processors.core.records.dead_letter` bounds what a dead letter
  carries, so that it can itself be produced); it is never decoded. The control fold refuses
  such an event the same way (:class:`processors.core.kafka.ControlFollower`), so an oversized
  control event is neither applied nor stored, only dead-lettered (by the sink).

Invariant: ``admit`` returns every message of the batch exactly once, either admitted (in input
order) or as the source of one dead letter; the batch's offsets are committed as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

from processors.core.processor import InMessage, OutMessage, RunContext

__all__ = ["OversizedMessage", "admit", "oversize_reason"]


class OversizedMessage(Exception):
    """A message over ``kafka.max_message_bytes``; never decoded."""


def oversize_reason(size: int, limit: int, what: str = "message") -> str:
    return f"{what} of {size} bytes; the limit is {limit} (kafka.max_message_bytes): not decoded"


def admit(
    batch: Sequence[InMessage], limit: int, ctx: RunContext
) -> tuple[list[InMessage], list[OutMessage]]:
    """(the messages to process, in order; the dead letters of the oversized ones)."""
    if all(len(m.value) <= limit for m in batch):
        return list(batch), []
    admitted: list[InMessage] = []
    letters: list[OutMessage] = []
    for msg in batch:
        if len(msg.value) <= limit:
            admitted.append(msg)
            continue
        ctx.progress.add("oversized_messages")
        letters.append(
            ctx.dead_letter(msg, OversizedMessage(oversize_reason(len(msg.value), limit)))
        )
    return admitted, letters
