from __future__ import annotations

from pathlib import Path

import pytest

from processors.core.config import load_settings
from processors.core.exceptions import ConfigError


def test_precedence_defaults_file_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "skyloop.yaml"
    config.write_text("batch_size: 8\ntarget_fpr: 0.01\nreference_size: 64\n")
    monkeypatch.setenv("SKYLOOP_TARGET_FPR", "0.02")
    settings = load_settings(config, reference_size=40)
    assert settings.batch.size == 8  # file
    assert settings.calibration.target_fpr == 0.02  # env beats file
    assert settings.calibration.reference_size == 40  # explicit beats both
    assert settings.calibration.vote_k == 2  # default
    assert settings.topic("scores") == "scores"


def test_bad_values_name_the_key_the_env_var_and_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYLOOP_TARGET_FPR", "2")
    with pytest.raises(ConfigError, match=r"target_fpr \(SKYLOOP_TARGET_FPR\) = '2'.*0.5"):
        load_settings()


def test_unknown_keys_and_bad_files_are_refused(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("batch_sise: 8\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_settings(typo)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listing)
    with pytest.raises(ConfigError, match="topic_prefix"):
        load_settings(topic_prefix="bad prefix!")
