"""The start-up bench's variants: a label and the environment its runs get."""

from __future__ import annotations

import argparse

import pytest

from tools.bench.startup import Variant


def test_a_variant_is_a_label_and_its_settings() -> None:
    assert Variant.parse("as-is") == Variant("as-is", {})
    variant = Variant.parse("staged:SKYLOOP_A=1 SKYLOOP_SOURCES=x,y")
    assert variant == Variant("staged", {"SKYLOOP_A": "1", "SKYLOOP_SOURCES": "x,y"})


def test_a_setting_without_a_value_is_refused_with_its_text() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'SKYLOOP_A' is not NAME=VALUE"):
        Variant.parse("bad:SKYLOOP_A")
