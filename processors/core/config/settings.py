"""``Settings``: the global keys and one frozen section per concern (see the package docstring
for the flat-name compatibility and ARCHITECTURE.md, "Settings").

Sources, highest first: explicit keyword values, ``SKYLOOP_<FLAT_NAME>`` variables,
``SKYLOOP_<SECTION>__<FIELD>`` (and ``SKYLOOP_<SECTION>`` as JSON) variables, the configuration
file of ``load_settings``, defaults. Flat and sectioned keys may be mixed in every source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processors.core.config.aliases import (
    ENV_PREFIX,
    FLAT_FIELDS,
    SECTIONS,
    FileSource,
    FlatEnvSource,
    nest,
)
from processors.core.config.sections_io import (
    AlertsSettings,
    BatchSettings,
    BrokerSettings,
    ClickHouseSettings,
    IngestSettings,
    KafkaSettings,
    MetricsSettings,
    ReportSettings,
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

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything a processor may be configured with, frozen once validated.

    Read ``settings.<section>.<field>`` (``settings.drift.window``). Unknown keys, flat or
    sectioned, are errors.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # truly global: where things are, and which self-correction regime runs
    data_dir: Path = Field(
        default=Path(".skyloop"), description="local stack data, artifacts, reports"
    )
    progress_dir: Path | None = Field(
        default=None, description="where processors write progress files"
    )
    control_policy: Literal["skyloop", "static", "astrolens"] = Field(
        default="skyloop",
        description=(
            "skyloop: drift, recalibration, decay; static: calibrate once; astrolens: "
            "AstroLens v1.1's threshold rules (benchmarks)"
        ),
    )

    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    broker: BrokerSettings = BrokerSettings()
    metrics: MetricsSettings = MetricsSettings()
    alerts: AlertsSettings = AlertsSettings()
    batch: BatchSettings = BatchSettings()
    ingest: IngestSettings = IngestSettings()
    score: ScoreSettings = ScoreSettings()
    ood: OodSettings = OodSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    drift: DriftSettings = DriftSettings()
    decay: DecaySettings = DecaySettings()
    sources: SourcesSettings = SourcesSettings()
    health: HealthSettings = HealthSettings()
    rollout: RolloutSettings = RolloutSettings()
    learning: LearningSettings = LearningSettings()
    train: TrainSettings = TrainSettings()
    crossmatch: CrossmatchSettings = CrossmatchSettings()
    sink: SinkSettings = SinkSettings()
    report: ReportSettings = ReportSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            FlatEnvSource(settings_cls),
            env_settings,
            FileSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Flat keys (``drift_window``) are moved into their sections (``drift.window``)."""
        return nest(data) if isinstance(data, Mapping) else data

    def topic(self, base: str) -> str:
        """The real topic name of a base topic (``images.raw`` → ``<prefix>images.raw``)."""
        return f"{self.kafka.topic_prefix}{base}"

    def group(self, processor: str) -> str:
        return f"{self.kafka.group_prefix}.{processor}"

    @property
    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, unvalidated like pydantic's own.

        ``update`` may name flat keys (``{"drift_window": 32}``) and sections, as a model or as
        a mapping of some of their fields (``{"drift": {"window": 32}}``); each touched section
        is copied with its changes, so no flat key ever lands on the top level.
        """
        if not update:
            return super().model_copy(deep=deep)
        changes: dict[str, dict[str, Any]] = {}
        plain: dict[str, Any] = {}
        for key, value in update.items():
            place = FLAT_FIELDS.get(key)
            if place is not None:
                changes.setdefault(place[0], {})[place[1]] = value
            elif key in SECTIONS and isinstance(value, Mapping):
                changes.setdefault(key, {}).update(value)
            else:
                plain[key] = value
        for section, fields in changes.items():
            base = plain.get(section, getattr(self, section))
            plain[section] = base.model_copy(update=fields)
        return super().model_copy(update=plain, deep=deep)

    def flat_dump(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """Every setting under its flat name (``drift_window``), top-level keys as they are.

        What the environment of a child process needs: ``SKYLOOP_<FLAT_NAME>`` for each.
        """
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name not in SECTIONS:
                out[name] = getattr(self, name)
        for flat, (section, field) in FLAT_FIELDS.items():
            out[flat] = getattr(getattr(self, section), field)
        return {k: v for k, v in out.items() if not (exclude_none and v is None)}
