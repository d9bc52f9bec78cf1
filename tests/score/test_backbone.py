"""Backbone: packaged weights load and mean something, preprocessing is robust, any timm model
loads from a weights file, and real features feed the OOD ensemble."""

from __future__ import annotations

import doctest
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from processors.core.exceptions import BadImageError, ConfigError
from processors.ood.ensemble import OODEnsemble, energy_score
from processors.ood.reference import ReferenceSet
from processors.score.backbone import (
    Backbone,
    BackboneOutput,
    BackboneSpec,
    fold_batchnorm,
    map_tf_port_state_dict,
    packaged_weights_path,
    preprocess_batch,
    preprocess_image,
)
from processors.score.backbone import model as backbone_module
from processors.score.backbone.prepared import prepared_dir

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def backbone(lite0: Backbone) -> Backbone:
    return lite0


def photo(name: str) -> np.ndarray:
    return getattr(data, name)().astype(np.float32)


def random_crops(image: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    crops = []
    for _ in range(n):
        side = int(rng.integers(48, 96))
        y = int(rng.integers(0, image.shape[0] - side))
        x = int(rng.integers(0, image.shape[1] - side))
        crop = np.rot90(image[y : y + side, x : x + side], int(rng.integers(4)))
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def test_docstring_example_runs() -> None:
    result = doctest.testmod(backbone_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_packaged_weights_load_and_classify_real_photos(backbone: Backbone) -> None:
    # A wrong key mapping, normalisation or architecture would not get these right.
    digest = __import__("hashlib").sha256(packaged_weights_path().read_bytes()).hexdigest()
    assert backbone.version == f"efficientnet_lite0@{digest[:12]}"
    assert backbone.architecture == "tf_efficientnet_lite0"
    assert (backbone.feature_dim, backbone.num_classes) == (1280, 1000)
    out = backbone.embed([photo("chelsea"), photo("coffee")])
    assert isinstance(out, BackboneOutput)
    assert out.features.dtype == np.float32 and out.logits.dtype == np.float32
    assert out.features.shape == (2, 1280) and out.logits.shape == (2, 1000)
    top = out.logits.argmax(axis=1)
    assert int(top[0]) in IMAGENET_CATS and int(top[1]) in IMAGENET_COFFEE


def test_features_are_deterministic_across_calls_and_instances(backbone: Backbone) -> None:
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(63, 63, 1)).astype(np.float32) for _ in range(3)]
    first = backbone.embed(images)
    again = backbone.embed(images)
    other = Backbone(BackboneSpec()).embed(images)
    assert np.array_equal(first.features, again.features)
    assert np.array_equal(first.features, other.features)
    assert np.array_equal(first.logits, other.logits)
    chunked = backbone.embed(images, batch_size=2)
    np.testing.assert_allclose(chunked.features, first.features, rtol=0, atol=1e-3)


def test_fast_execution_equals_the_plain_tf_padded_model(backbone: Backbone) -> None:
    # The packaged weights run as a BN-folded, symmetric-padding twin on flipped inputs; it must
    # compute what timm's own tf_efficientnet_lite0 (TF padding, unfolded BN) computes.
    import timm

    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    plain.load_state_dict(map_tf_port_state_dict(state, plain), strict=True)
    exact = Backbone(BackboneSpec(bf16=False, channels_last=False))
    assert exact.flip_input and backbone.flip_input
    batch = exact.preprocess([photo("chelsea"), photo("rocket"), photo("hubble_deep_field")])
    with torch.inference_mode():
        feats = plain.forward_features(batch)
        expected = plain.forward_head(feats, pre_logits=True).numpy()
        expected_logits = plain.forward_head(feats).numpy()
    out = exact.forward(batch)
    np.testing.assert_allclose(out.features, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logits, expected_logits, rtol=1e-4, atol=1e-3)


def test_sizes_not_divisible_by_32_run_the_tf_padded_model() -> None:
    odd = Backbone(BackboneSpec(image_size=200, bf16=False))
    assert not odd.flip_input and odd.architecture == "tf_efficientnet_lite0"
    out = odd.embed([photo("chelsea")])
    assert int(out.logits.argmax()) in IMAGENET_CATS


def test_fold_batchnorm_preserves_outputs() -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    for module in model.modules():  # non-trivial statistics, or folding would be a no-op
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        before = model(x)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == batchnorms == 49
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_bf16_features_stay_close_to_float32(backbone: Backbone) -> None:
    exact = Backbone(BackboneSpec(bf16=False, channels_last=False))
    images = [photo("chelsea"), photo("astronaut"), photo("rocket")]
    fast, slow = backbone.embed(images).features, exact.embed(images).features
    cosine = (fast * slow).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(slow, axis=1)
    assert cosine.min() > 0.99


def test_preprocess_is_invariant_to_affine_brightness() -> None:
    # Per-image robust stretch: a survey's units or zero point must not change the features.
    rng = np.random.default_rng(2)
    image = rng.gamma(2.0, size=(40, 50, 1)).astype(np.float32)
    base = preprocess_image(image, 64, HALF, HALF)
    scaled = preprocess_image(image * 1000.0 - 37.0, 64, HALF, HALF)
    torch.testing.assert_close(base, scaled, atol=1e-4, rtol=0)
    assert base.shape == (3, 64, 64) and base.dtype == torch.float32
    assert float(base.min()) >= -1.0 and float(base.max()) <= 1.0


def test_preprocess_replaces_non_finite_by_the_median() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(32, 32, 1)).astype(np.float32)
    holed = image.copy()
    holed[:4, :4] = np.nan
    holed[10, 10] = np.inf
    holed[11, 11] = -np.inf
    patched = image.copy()
    patched[:4, :4] = patched[10, 10] = patched[11, 11] = np.median(holed[np.isfinite(holed)])
    expected = preprocess_image(patched, 32, HALF, HALF)
    got = preprocess_image(holed, 32, HALF, HALF)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)
    with pytest.raises(BadImageError, match="no finite"):
        preprocess_image(np.full((8, 8, 1), np.nan, np.float32), 32, HALF, HALF)


def test_band_rules() -> None:
    rng = np.random.default_rng(4)
    gray = rng.uniform(size=(20, 20, 1)).astype(np.float32)
    one = preprocess_image(gray, 16, HALF, HALF)
    assert torch.equal(one[0], one[1]) and torch.equal(one[1], one[2])
    torch.testing.assert_close(preprocess_image(gray[:, :, 0], 16, HALF, HALF), one)
    two = preprocess_image(np.concatenate([gray, 2 * gray], axis=2), 16, HALF, HALF)
    assert not torch.equal(two[0], two[2])
    rgb = rng.uniform(size=(20, 20, 3)).astype(np.float32)
    rgba = np.concatenate([rgb, np.ones((20, 20, 1), np.float32)], axis=2)
    torch.testing.assert_close(
        preprocess_image(rgba, 16, HALF, HALF), preprocess_image(rgb, 16, HALF, HALF)
    )
    five = np.concatenate([rgb, rng.uniform(size=(20, 20, 2)).astype(np.float32) * 100], axis=2)
    torch.testing.assert_close(
        preprocess_image(five, 16, HALF, HALF), preprocess_image(rgb, 16, HALF, HALF)
    )


@pytest.mark.parametrize("stretch", ["linear", "asinh"])
def test_batched_preprocessing_equals_one_by_one_bit_for_bit(stretch: str) -> None:
    # The scorer preprocesses whole batches; features must not depend on that.
    rng = np.random.default_rng(6)
    images: list[np.ndarray] = [rng.normal(size=(63, 63, 1)).astype(np.float32) for _ in range(9)]
    images[2][0, :5] = np.nan  # median patching takes the single-image path
    images[4][:] = 7.0  # constant: mid-grey
    images[5] = rng.gamma(2.0, size=(63, 63, 1)).astype(np.float64) * 1e4  # other dtype
    images += [rng.normal(size=(20, 30, 2)).astype(np.float32) for _ in range(2)]
    images += [rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8) for _ in range(2)]
    images += [rng.normal(size=(17, 19, 5)), rng.normal(size=(33, 33)).astype(np.float32)]
    images += [rng.normal(size=(600, 520, 1)).astype(np.float32)]  # subsampled statistics
    for mean, std in [(HALF, HALF), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]:
        batch = preprocess_batch(images, 64, mean, std, stretch)  # type: ignore[arg-type]
        assert batch.shape == (len(images), 3, 64, 64)
        for i, image in enumerate(images):
            one = preprocess_image(image, 64, mean, std, stretch)  # type: ignore[arg-type]
            assert torch.equal(batch[i], one), f"image {i} of shape {image.shape}"


def test_batched_preprocessing_names_the_first_bad_image() -> None:
    good = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(BadImageError, match=r"image 1: .*no finite"):
        preprocess_batch([good, np.full((8, 8, 1), np.nan), np.zeros((2, 2, 2, 2))], 16, HALF, HALF)
    with pytest.raises(BadImageError, match=r"image 0: expected"):
        preprocess_batch([np.zeros((2, 2, 2, 2)), np.full((8, 8, 1), np.nan)], 16, HALF, HALF)
    with pytest.raises(BadImageError, match=r"image 2: .*no finite"):
        preprocess_batch([good, good, np.full((8, 8, 1), np.nan)], 16, HALF, HALF)
    with pytest.raises(BadImageError, match=r"image 0: .*no finite"):
        preprocess_batch([np.full((8, 8, 1), np.nan)] * 2, 16, HALF, HALF)
    assert preprocess_batch([], 16, HALF, HALF).shape == (0, 3, 16, 16)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (2, 3, 1), (3, 200, 3), (5, 7, 4), (512, 17, 2), (700, 900, 3)]
)
def test_tiny_odd_and_elongated_images(backbone: Backbone, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(5)
    out = backbone.embed([rng.normal(size=shape).astype(np.float32)])
    assert out.features.shape == (1, 1280)
    assert np.isfinite(out.features).all() and np.isfinite(out.logits).all()


def test_constant_images_become_mid_grey(backbone: Backbone) -> None:
    tensor = preprocess_image(np.full((9, 9, 3), 42.0, np.float32), 16, HALF, HALF)
    assert torch.equal(tensor, torch.zeros(3, 16, 16))  # 0.5 normalised by mean 0.5
    out = backbone.embed([np.full((30, 30, 1), -5.0, np.float32), np.zeros((30, 30, 3))])
    assert np.isfinite(out.features).all()
    np.testing.assert_allclose(out.features[0], out.features[1])


def test_eight_bit_and_integer_inputs(backbone: Backbone) -> None:
    chelsea = data.chelsea()
    from_uint8 = backbone.preprocess([chelsea])
    from_float = backbone.preprocess([chelsea.astype(np.float32)])
    torch.testing.assert_close(from_uint8, from_float)


def test_bad_inputs_name_the_image(backbone: Backbone) -> None:
    good = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(BadImageError, match=r"image 1: .*no finite"):
        backbone.preprocess([good, np.full((8, 8), np.nan)])
    with pytest.raises(BadImageError, match="image 0: expected"):
        backbone.preprocess([np.zeros((2, 2, 2, 2))])
    with pytest.raises(BadImageError, match="empty"):
        backbone.preprocess([np.zeros((0, 5, 1))])
    empty = backbone.embed([])
    assert empty.features.shape == (0, 1280) and empty.logits.shape == (0, 1000)


def test_spec_and_name_errors_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="not a timm model"):
        Backbone(BackboneSpec(name="efficientnet_nope"))
    with pytest.raises(ConfigError, match="no offline weights"):
        Backbone(BackboneSpec(name="vit_tiny_patch16_224"))
    with pytest.raises(ConfigError, match="no such file"):
        Backbone(BackboneSpec(weights="/nonexistent/weights.pth"))
    with pytest.raises(ConfigError, match="needs the network"):
        Backbone(BackboneSpec(weights="hf-hub:timm/efficientnet_lite0.ra_in1k"))
    for bad in [{"image_size": 8}, {"threads": 0}, {"device": "tpu"}, {"stretch": "log"}]:
        with pytest.raises(ConfigError):
            BackboneSpec(**bad)  # type: ignore[arg-type]


def _tiny_vit_checkpoint(path: Path, wrap: bool) -> torch.nn.Module:
    import timm

    torch.manual_seed(123)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    state = model.state_dict()
    if wrap:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    return model


@pytest.mark.parametrize("wrap", [False, True])
def test_any_timm_model_loads_from_a_weights_file(tmp_path: Path, wrap: bool) -> None:
    path = tmp_path / "vit_tiny.pth"
    reference = _tiny_vit_checkpoint(path, wrap)
    spec = BackboneSpec(name="vit_tiny_patch16_224", weights=str(path), bf16=False)
    vit = Backbone(spec)
    # its trace is not faithful (shape checks become constants), so it is never prepared
    assert not list(prepared_dir().glob("vit_tiny_patch16_224-*"))
    digest = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert vit.version == f"vit_tiny_patch16_224@{digest[:12]}"
    assert (vit.feature_dim, vit.num_classes) == (192, 1000)
    batch = vit.preprocess([photo("astronaut"), photo("coffee")])
    out = vit.forward(batch)
    with torch.inference_mode():
        feats = reference.forward_features(batch)
        expected_features = reference.forward_head(feats, pre_logits=True)
        expected_logits = reference.forward_head(feats)
    np.testing.assert_allclose(out.features, expected_features.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logits, expected_logits.numpy(), rtol=1e-4, atol=1e-4)


def test_mismatched_weights_fail_loudly(tmp_path: Path) -> None:
    path = tmp_path / "vit_tiny.pth"
    _tiny_vit_checkpoint(path, wrap=False)
    with pytest.raises(ConfigError, match="does not match timm model 'vit_small_patch16_224'"):
        Backbone(BackboneSpec(name="vit_small_patch16_224", weights=str(path)))
    with pytest.raises(ConfigError, match="fixed 224x224"):
        Backbone(BackboneSpec(name="vit_tiny_patch16_224", weights=str(path), image_size=160))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        Backbone(BackboneSpec(weights=str(garbage)))


def test_random_init_needs_consent_warns_and_is_seeded(caplog: pytest.LogCaptureFixture) -> None:
    spec = BackboneSpec(name="vit_tiny_patch16_224", allow_random=True, bf16=False)
    with caplog.at_level(logging.WARNING):
        first = Backbone(spec)
    assert any("RANDOM WEIGHTS" in r.getMessage() for r in caplog.records)
    assert first.version == "vit_tiny_patch16_224@random-0"
    image = [np.random.default_rng(6).normal(size=(32, 32, 3)).astype(np.float32)]
    np.testing.assert_array_equal(first.embed(image).features, Backbone(spec).embed(image).features)


def test_real_features_separate_non_sky_images_from_sky_crops(backbone: Backbone) -> None:
    # Reference: crops of the Hubble Deep Field; anomalies: crops of everyday photographs.
    rng = np.random.default_rng(0)
    sky = photo("hubble_deep_field")
    reference_out = backbone.embed(random_crops(sky, 120, rng), batch_size=64)
    reference = ReferenceSet(
        reference_out.features, energy_score(reference_out.logits), backbone.version
    )
    ensemble = OODEnsemble.fit(reference)
    thresholds = ensemble.thresholds_for_fpr(0.05, vote_k=2)

    def candidates(images: list[np.ndarray]) -> np.ndarray:
        out = backbone.embed(images)
        calibrated = ensemble.calibrate(ensemble.raw_scores(out.features, energy_score(out.logits)))
        return ensemble.decide(calibrated, thresholds, vote_k=2)[2]

    normal_rate = candidates(random_crops(sky, 30, rng)).mean()
    anomalies = random_crops(photo("chelsea"), 8, rng) + random_crops(photo("coffee"), 8, rng)
    assert normal_rate <= 0.2
    assert candidates(anomalies).mean() >= 0.9
