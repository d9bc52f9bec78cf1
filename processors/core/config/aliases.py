"""The flat names of settings (``drift_window``) and the sectioned fields they stand for
(``drift.window``), and the sources that read flat names from the environment and a file.

Invariants: every field of every section has exactly one flat name, no two flat names share a
field, and no flat name is also a section name or a top-level field; ``nest`` turns any mix of
flat and sectioned keys into the sectioned form, a flat key winning over the same field given
in a section mapping of the same input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource
from pydantic_settings.exceptions import SettingsError

from processors.core.config.sections_io import (
    AlertsSettings,
    BatchSettings,
    BrokerSettings,
    ClickHouseSettings,
    IngestSettings,
    KafkaSettings,
    MetricsSettings,
    ReportSettings,
    Section,
    SinkSettings,
)
from processors.core.config.sections_learning import (
    CrossmatchSettings,
    LearningSettings,
    TrainSettings,
)
from processors.core.config.sections_scoring import (
    CalibrationSettings,
    DecaySettings,
    DriftSettings,
    HealthSettings,
    OodSettings,
    RolloutSettings,
    ScoreSettings,
    SourcesSettings,
)

__all__ = ["ENV_PREFIX", "FLAT_FIELDS", "SECTIONS", "flat_name", "nest"]

ENV_PREFIX = "SKYLOOP_"

# section name -> its type, in the order of Settings' fields
SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "clickhouse": ClickHouseSettings,
    "broker": BrokerSettings,
    "metrics": MetricsSettings,
    "alerts": AlertsSettings,
    "batch": BatchSettings,
    "ingest": IngestSettings,
    "score": ScoreSettings,
    "ood": OodSettings,
    "calibration": CalibrationSettings,
    "drift": DriftSettings,
    "decay": DecaySettings,
    "sources": SourcesSettings,
    "health": HealthSettings,
    "rollout": RolloutSettings,
    "learning": LearningSettings,
    "train": TrainSettings,
    "crossmatch": CrossmatchSettings,
    "sink": SinkSettings,
    "report": ReportSettings,
}

# a field's flat name is <prefix><field> unless listed in _RENAMED
_PREFIX = {
    "kafka": "kafka_",
    "clickhouse": "clickhouse_",
    "broker": "broker_",
    "metrics": "metrics_",
    "alerts": "alert_",
    "batch": "batch_",
    "ingest": "ingest_",
    "score": "",
    "ood": "ood_",
    "calibration": "",
    "drift": "drift_",
    "decay": "threshold_",
    "sources": "",
    "health": "health_",
    "rollout": "",
    "learning": "",
    "train": "train_",
    "crossmatch": "crossmatch_",
    "sink": "sink_",
    "report": "report_",
}
_RENAMED = {
    ("kafka", "bootstrap_servers"): "bootstrap_servers",
    ("kafka", "topic_prefix"): "topic_prefix",
    ("kafka", "group_prefix"): "group_prefix",
    ("kafka", "session_timeout_ms"): "session_timeout_ms",
    ("sink", "store_retry_max_s"): "store_retry_max_s",
    ("broker", "log_retention_bytes"): "log_retention_bytes",
    ("broker", "log_retention_s"): "log_retention_s",
    ("score", "chunks"): "score_chunks",
    ("calibration", "max_trim"): "calibration_max_trim",
    ("decay", "rate"): "threshold_decay",
    ("decay", "every"): "threshold_decay_every",
    ("sources", "weight_floor"): "source_weight_floor",
    ("health", "stats_window_s"): "stats_window_s",
    ("rollout", "trial_outputs"): "rollout_trial_outputs",
    ("rollout", "shadow_outputs"): "rollout_shadow_outputs",
}

# flat name (the key of the flat layout, and SKYLOOP_<FLAT> in upper case) -> (section, field)
FLAT_FIELDS: dict[str, tuple[str, str]] = {
    _RENAMED.get((section, field), f"{_PREFIX[section]}{field}"): (section, field)
    for section, model in SECTIONS.items()
    for field in model.model_fields
}
_FLAT_OF = {place: flat for flat, place in FLAT_FIELDS.items()}
if len(_FLAT_OF) != len(FLAT_FIELDS) or set(FLAT_FIELDS) & set(SECTIONS):
    raise AssertionError("flat setting names must be unique and differ from section names")


def flat_name(section: str, field: str) -> str:
    """The flat name of ``section.field`` (``drift``, ``window`` → ``drift_window``)."""
    return _FLAT_OF[(section, field)]


def _section_dict(value: Any) -> dict[str, Any] | None:
    if isinstance(value, BaseModel):
        return {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return dict(value)
    return None


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every flat key moved into its section's mapping.

    Keys that are neither flat names nor sections pass unchanged (a top-level field, or an
    unknown key that validation then refuses). A section given as a model or mapping is kept
    as a mapping where a flat key adds to it; anything else given for a section is left for
    validation to refuse.
    """
    out: dict[str, Any] = {}
    flat: list[tuple[str, str, Any]] = []
    for key, value in values.items():
        place = FLAT_FIELDS.get(key)
        if place is None:
            out[key] = value
        else:
            flat.append((*place, value))
    for section, field, value in flat:
        current = out.get(section)
        merged = {} if current is None else _section_dict(current)
        if merged is None:  # not a mapping: validation reports the section's value
            continue
        merged[field] = value
        out[section] = merged
    return out


def nested_keys(values: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The (section, field) pairs ``values`` gives in the sectioned form."""
    return {
        (section, str(field))
        for section, value in values.items()
        if section in SECTIONS and isinstance(value, Mapping)
        for field in value
    }


def _is_complex(info: FieldInfo) -> bool:
    """Lists and mappings come from the environment as JSON (as pydantic-settings reads them)."""
    annotation = info.annotation
    return get_origin(annotation) in (list, dict) or annotation in (list, dict)


class FlatEnvSource(PydanticBaseSettingsSource):
    """``SKYLOOP_<FLAT_NAME>`` variables (case-insensitive), in the sectioned form."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the environment at once

    def __call__(self) -> dict[str, Any]:
        env = {key.lower(): value for key, value in os.environ.items()}
        out: dict[str, dict[str, Any]] = {}
        for flat, (section, field) in FLAT_FIELDS.items():
            raw = env.get(f"{ENV_PREFIX.lower()}{flat}")
            if raw is None:
                continue
            value: Any = raw
            if _is_complex(SECTIONS[section].model_fields[field]):
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    raise SettingsError(
                        f'error parsing value for field "{flat}" from source "FlatEnvSource"'
                    ) from exc
            out.setdefault(section, {})[field] = value
        return out


def flat_env_names() -> set[str]:
    """The flat names set in the environment (``SKYLOOP_DRIFT_WINDOW`` → ``drift_window``)."""
    env = {key.lower() for key in os.environ}
    return {flat for flat in FLAT_FIELDS if f"{ENV_PREFIX.lower()}{flat}" in env}


def nested_env_keys() -> set[tuple[str, str]]:
    """The (section, field) pairs set by ``SKYLOOP_<SECTION>__<FIELD>`` variables."""
    found = set()
    for key in os.environ:
        head, sep, field = key.lower().removeprefix(ENV_PREFIX.lower()).partition("__")
        if sep and key.lower().startswith(ENV_PREFIX.lower()) and head in SECTIONS:
            found.add((head, field))
    return found


# the values of the configuration file being loaded (set by load_settings, for FileSource)
FILE_VALUES: ContextVar[Mapping[str, Any] | None] = ContextVar("skyloop_config_file", default=None)


class FileSource(PydanticBaseSettingsSource):
    """The configuration file's values (flat or sectioned keys), below the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole file

    def __call__(self) -> dict[str, Any]:
        return nest(FILE_VALUES.get() or {})
