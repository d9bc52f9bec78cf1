"""``load_settings``: defaults < YAML file < environment < explicit overrides, validated once.

Every error names the key as the user wrote it, its variable, the bad value and what is
accepted, e.g. ``target_fpr (SKYLOOP_TARGET_FPR) = '2': Input should be less than or equal to
0.5`` for a flat key, ``drift.window (SKYLOOP_DRIFT__WINDOW) = 4: ...`` for a sectioned one.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from processors.core.config.aliases import (
    ENV_PREFIX,
    FILE_VALUES,
    FLAT_FIELDS,
    SECTIONS,
    flat_name,
    nested_env_keys,
    nested_keys,
)
from processors.core.config.settings import Settings
from processors.core.exceptions import ConfigError

__all__ = ["format_error", "load_settings"]

_FLAT_PLACES = set(FLAT_FIELDS.values())


def _key_and_env(
    loc: tuple[str | int, ...], nested: AbstractSet[tuple[str, str]]
) -> tuple[str, str]:
    """The key the user wrote for an error's location, and its environment variable."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] in SECTIONS:
        section, field, rest = parts[0], parts[1], parts[2:]
        if (section, field) not in nested and (section, field) in _FLAT_PLACES:
            key = ".".join([flat_name(section, field), *rest])
            return key, f"{ENV_PREFIX}{key.upper()}"
        key = ".".join(parts)
        env = f"{ENV_PREFIX}{section.upper()}__{field.upper()}"
        return key, ".".join([env, *(p.upper() for p in rest)])
    key = ".".join(parts)
    return key, f"{ENV_PREFIX}{key.upper()}"


def format_error(exc: ValidationError, nested: AbstractSet[tuple[str, str]] = frozenset()) -> str:
    """The errors of ``exc``, one a line, each naming its key as written (``nested``: the
    (section, field) pairs given in the sectioned form; the rest are named by flat name)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        rule = not loc or (len(loc) == 1 and loc[0] in SECTIONS and err["type"] == "value_error")
        if rule:  # a rule across keys: the message names them
            lines.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        key, env = _key_and_env(loc, nested)
        value = err.get("input")
        lines.append(f"{key} ({env}) = {value!r}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional YAML file, the environment and ``overrides``.

    ``config_file`` defaults to ``$SKYLOOP_CONFIG`` when set. Keys of the file and of
    ``overrides`` may be flat (``drift_window``) or sectioned (``drift: {window: 64}``);
    overrides of ``None`` are ignored. Unknown keys are errors (``ConfigError``).
    """
    path = config_file or (
        Path(os.environ["SKYLOOP_CONFIG"]) if "SKYLOOP_CONFIG" in os.environ else None
    )
    file_values = _read_file(path) if path is not None else {}
    explicit = {k: v for k, v in overrides.items() if v is not None}
    nested = nested_keys(file_values) | nested_keys(explicit) | nested_env_keys()
    token = FILE_VALUES.set(file_values)
    try:
        return Settings(**explicit)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, nested)) from exc
    finally:
        FILE_VALUES.reset(token)
