"""The one registry of spec names, the one option parser, and the capabilities sources declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.core.exceptions import ConfigError
from processors.ingest.files.folder import FolderSource
from processors.ingest.interleaved import Interleaved
from processors.ingest.sources import source_from_spec
from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.options import choice, integer, split_options, typed_options
from processors.ingest.sources.registry import SOURCE_NAMES, spec_name
from processors.ingest.surveys.source import SurveySource
from processors.ingest.synthetic.hubble import HubbleDeepField
from processors.ingest.synthetic.sky import SyntheticSky
from processors.ingest.ztf import ZtfFileSource, ZtfTopicSource


def test_the_registry_names_every_family_in_the_documented_order() -> None:
    assert SOURCE_NAMES == (
        "synthetic",
        "hubble",
        "ztf",
        "dir",
        "sdss",
        "decals",
        "panstarrs",
        "ztf-irsa",
        "hst",
        "galaxyzoo",
    )
    assert spec_name(" synthetic ?seed=1") == "synthetic"
    with pytest.raises(ConfigError, match=r"unknown source 'moon'.*accepted: synthetic, hubble"):
        source_from_spec("moon:x")


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("synthetic", SyntheticSky),
        ("hubble", HubbleDeepField),
        ("ztf:{dir}", ZtfFileSource),
        ("ztf:kafka://127.0.0.1:9/alerts", ZtfTopicSource),
        ("dir:{dir}", FolderSource),
        ("sdss:{csv}", SurveySource),
        ("galaxyzoo:{csv}?cutout=decals", SurveySource),
    ],
)
def test_every_name_builds_a_source_of_its_family(spec: str, kind: type, tmp_path: Path) -> None:
    csv = tmp_path / "targets.csv"
    csv.write_text("ra,dec,name\n150.1,2.2,a\n")
    source = source_from_spec(spec.format(dir=tmp_path, csv=csv))
    assert isinstance(source, kind) and isinstance(source, BaseSource)
    assert isinstance(type(source).capabilities, Capabilities)


def test_capabilities_are_declared_per_class() -> None:
    assert SyntheticSky.capabilities.truth and not HubbleDeepField.capabilities.truth
    assert FolderSource.capabilities.watches_folder and ZtfFileSource.capabilities.watches_folder
    assert SurveySource.capabilities.rate_limited_http and SurveySource.capabilities.rests
    assert ZtfTopicSource.capabilities.commits_after_delivery
    assert not ZtfFileSource.capabilities.commits_after_delivery
    assert Interleaved([SyntheticSky(limit=1)]).parts()[0].name == "synthetic"


def test_one_option_parser_for_every_family() -> None:
    assert split_options("a/b?x=1&y=%2B2") == ("a/b", {"x": "1", "y": "+2"})
    assert split_options("cut?s/*.png") == ("cut?s/*.png", {})
    with pytest.raises(ConfigError, match="'x' is given twice"):
        split_options("a?x=1&x=2")
    parsers = {"n": integer(1, 3), "mode": choice("a", "b")}
    assert typed_options("k", {"n": "2", "mode": "b"}, parsers) == {"n": 2, "mode": "b"}
    with pytest.raises(ConfigError, match=r"n='9': accepted values are ints in \[1, 3\]"):
        typed_options("k", {"n": "9"}, parsers)
    with pytest.raises(ConfigError, match="unknown option 'z'; accepted keys are mode, n"):
        typed_options("k", {"z": "1"}, parsers)


def test_synthetic_options_go_through_the_same_parser() -> None:
    sky = source_from_spec("synthetic?drifts=60:+space&kind=survey&seed=3")
    assert isinstance(sky, SyntheticSky) and (sky.drifts, sky.seed) == ("60:+space", 3)
    with pytest.raises(ConfigError, match="'seed' is given twice"):
        source_from_spec("synthetic?seed=1&seed=2")
    with pytest.raises(ConfigError, match="are not key=value pairs"):
        source_from_spec("synthetic?seed")
    with pytest.raises(ConfigError, match="source 'hubble': seed='x': accepted values are ints"):
        source_from_spec("hubble?seed=x")
