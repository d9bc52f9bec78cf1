"""Decode, preprocess and embed one batch of ``images.raw`` messages, chunk by chunk.

What it consumes: the raw messages of a batch (Avro ImageRecords with encoded pixels). What it
produces: an :class:`EmbeddedBatch`: the decodable images in input order with their backbone
outputs, and the messages that could not be used, with the reason (Avro or pixel errors, via
:func:`processors.core.imaging.decode_image`, or preprocessing).

With ``chunks > 1`` the batch is cut into that many contiguous chunks and a single worker
thread decodes and preprocesses chunk k+1 while the calling thread runs the backbone on chunk
k (torch releases the GIL during the forward pass). The backbone then runs on chunks, so its
batch is the chunk: on a small CPU a smaller forward batch can be faster (cache), and bf16
features can differ in the last bits with batch composition (see the backbone module).
Row order, dead letters and everything else are the same for every ``chunks``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from processors.core.codec import AvroCodec
from processors.core.exceptions import BadImageError, CodecError
from processors.core.imaging import decode_image
from processors.core.records import ImageRecord
from processors.core.runner import InMessage
from processors.score.backbone import Backbone, BackboneOutput

__all__ = ["BatchEmbedder", "EmbeddedBatch", "StageTimes"]


@dataclass
class StageTimes:
    """Seconds spent per scoring stage since start, and how many batches and images.

    ``decode`` and ``preprocess`` are measured where they run (the worker thread when chunks
    overlap), so with overlap the stages sum to more than the wall time.
    """

    control: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    forward: float = 0.0
    decide: float = 0.0
    encode: float = 0.0
    batches: int = 0
    images: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass
class EmbeddedBatch:
    """The usable images of a batch, in input order, and the unusable messages.

    ``positions[i]`` is the batch index of ``records[i]`` (ascending); ``outputs`` row ``i`` is
    the backbone's output for ``records[i]``; ``failures`` holds ``(batch index, error,
    source)``, the source when the record itself was readable.
    """

    positions: list[int] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)
    arrays: list[NDArray[np.float32]] = field(default_factory=list)
    failures: list[tuple[int, Exception, str | None]] = field(default_factory=list)
    outputs: BackboneOutput | None = None


@dataclass
class _Chunk:
    part: EmbeddedBatch
    tensor: torch.Tensor
    decode_s: float
    preprocess_s: float


class BatchEmbedder:
    """See the module docstring. Not thread-safe: one caller (the processor's thread)."""

    def __init__(self, codec: AvroCodec, chunks: int, times: StageTimes) -> None:
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        self.codec = codec
        self.chunks = chunks
        self.times = times
        self._pool: ThreadPoolExecutor | None = None
        if chunks > 1:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="score-decode")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def embed(self, batch: Sequence[InMessage], backbone: Backbone) -> EmbeddedBatch:
        """Every usable message of ``batch`` embedded by ``backbone``, in input order."""
        k = max(1, min(self.chunks, len(batch)))
        bounds = [round(j * len(batch) / k) for j in range(k + 1)]
        spans = [range(bounds[j], bounds[j + 1]) for j in range(k)]
        result = EmbeddedBatch()
        parts: list[BackboneOutput] = []
        pending: Future[_Chunk] | None = None
        if self._pool is not None and k > 1:
            pending = self._pool.submit(self._prepare, batch, spans[0], backbone)
        for j, span in enumerate(spans):
            if pending is not None:
                chunk, pending = pending.result(), None
            else:
                chunk = self._prepare(batch, span, backbone)
            if self._pool is not None and j + 1 < k:
                pending = self._pool.submit(self._prepare, batch, spans[j + 1], backbone)
            started = time.perf_counter()
            if chunk.part.records:
                parts.append(backbone.forward(chunk.tensor))
            self.times.forward += time.perf_counter() - started
            self.times.decode += chunk.decode_s
            self.times.preprocess += chunk.preprocess_s
            result.positions += chunk.part.positions
            result.records += chunk.part.records
            result.arrays += chunk.part.arrays
            result.failures += chunk.part.failures
        if parts:
            result.outputs = BackboneOutput(
                features=np.concatenate([p.features for p in parts]),
                logits=np.concatenate([p.logits for p in parts]),
            )
        return result

    def _prepare(self, batch: Sequence[InMessage], span: range, backbone: Backbone) -> _Chunk:
        """Decode and preprocess one chunk; runs on the worker thread when chunks overlap, so it
        touches nothing shared but its arguments (metrics and dead letters are built later)."""
        part = EmbeddedBatch()
        started = time.perf_counter()
        for i in span:
            try:
                record: ImageRecord = self.codec.decode(batch[i].value, "skyloop.ImageRecord")  # type: ignore[assignment]
            except CodecError as exc:
                part.failures.append((i, exc, None))
                continue
            try:
                part.arrays.append(decode_image(record))
            except BadImageError as exc:
                part.failures.append((i, exc, record["source"]))
                continue
            part.records.append(record)
            part.positions.append(i)
        decoded = time.perf_counter()
        try:
            tensor = backbone.preprocess(part.arrays)
        except BadImageError:
            tensor = self._preprocess_one_by_one(part, backbone)
        return _Chunk(part, tensor, decoded - started, time.perf_counter() - decoded)

    @staticmethod
    def _preprocess_one_by_one(part: EmbeddedBatch, backbone: Backbone) -> torch.Tensor:
        """Move the images preprocessing refuses (decode_image accepted them) to failures."""
        keep: list[int] = []
        tensors: list[torch.Tensor] = []
        for j, array in enumerate(part.arrays):
            try:
                tensors.append(backbone.preprocess([array]))
                keep.append(j)
            except BadImageError as exc:
                part.failures.append((part.positions[j], exc, part.records[j]["source"]))
        part.positions = [part.positions[j] for j in keep]
        part.records = [part.records[j] for j in keep]
        part.arrays = [part.arrays[j] for j in keep]
        return torch.cat(tensors) if tensors else backbone.preprocess([])
