"""Batch decoding and embedding: chunked (overlapped) and plain give the same rows and failures."""

from __future__ import annotations

import numpy as np
import pytest

from processors.core.codec import default_codec
from processors.core.imaging import decode_image, encode_fits
from processors.core.runner import InMessage
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.score.backbone import Backbone
from processors.score.embedding import BatchEmbedder, StageTimes

CODEC = default_codec()


def messages() -> tuple[list[InMessage], list[int]]:
    """11 messages: good FITS images with an undecodable value and a NaN-only image among them."""
    sky = SyntheticSky(name="sky", seed=9)
    values = [CODEC.encode(to_record(sky.image(n)), "skyloop.ImageRecord") for n in range(9)]
    nan_record = to_record(sky.image(99))
    nan_record["pixels"] = encode_fits(np.full((64, 64), np.nan, np.float32))
    values.insert(3, b"\xc3\x01garbage")
    values.insert(8, CODEC.encode(nan_record, "skyloop.ImageRecord"))
    batch = [InMessage("images.raw", 0, i, None, v) for i, v in enumerate(values)]
    return batch, [3, 8]


@pytest.mark.parametrize("chunks", [2, 3, 11, 20])
def test_chunked_embedding_equals_the_plain_one(lite0: Backbone, chunks: int) -> None:
    batch, bad = messages()
    plain_times, chunked_times = StageTimes(), StageTimes()
    plain = BatchEmbedder(CODEC, 1, plain_times)
    chunked = BatchEmbedder(CODEC, chunks, chunked_times)
    try:
        a, b = plain.embed(batch, lite0), chunked.embed(batch, lite0)
    finally:
        plain.close()
        chunked.close()
    assert a.positions == b.positions == [i for i in range(len(batch)) if i not in bad]
    assert [i for i, _, _ in a.failures] == [i for i, _, _ in b.failures] == bad
    assert [type(e).__name__ for _, e, _ in b.failures] == ["CorruptMessageError", "BadImageError"]
    assert b.failures[0][2] is None and b.failures[1][2] is not None  # readable record: its source
    assert [r["image_id"] for r in a.records] == [r["image_id"] for r in b.records]
    for array, record in zip(b.arrays, b.records, strict=True):
        np.testing.assert_array_equal(array, decode_image(record))
    assert a.outputs is not None and b.outputs is not None
    assert a.outputs.features.shape == b.outputs.features.shape == (9, 1280)
    # Another forward batch composition: equal up to bf16 last bits.
    np.testing.assert_allclose(a.outputs.features, b.outputs.features, rtol=0, atol=2e-2)
    cosine = (a.outputs.features * b.outputs.features).sum(1) / (
        np.linalg.norm(a.outputs.features, axis=1) * np.linalg.norm(b.outputs.features, axis=1)
    )
    assert cosine.min() > 0.999
    for times in (plain_times, chunked_times):
        assert times.decode > 0 and times.preprocess > 0 and times.forward > 0


def test_a_batch_of_only_bad_messages_has_no_outputs(lite0: Backbone) -> None:
    batch = [InMessage("images.raw", 0, i, None, b"\x00bad") for i in range(3)]
    embedder = BatchEmbedder(CODEC, 2, StageTimes())
    try:
        result = embedder.embed(batch, lite0)
    finally:
        embedder.close()
    assert result.outputs is None and result.records == []
    assert [i for i, _, _ in result.failures] == [0, 1, 2]
    with pytest.raises(ValueError, match="chunks"):
        BatchEmbedder(CODEC, 0, StageTimes())
