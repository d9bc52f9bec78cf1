"""Every survey client against the local fake survey: documented requests, valid images, and a
hostile network (throttling, server errors, timeouts, resets, truncated and error-page
payloads, a slow drip) that costs retries but never a target or a corrupt image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.core.exceptions import ConfigError
from processors.core.imaging import decode_pixels
from processors.ingest.sources import source_from_spec
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.surveys.source import SurveySource
from tests.ingest.fake_survey import FakeSurvey, fake_survey

FAST = (
    "connect_timeout_s=1&read_timeout_s=0.3&total_timeout_s=0.6&rate_per_s=500&burst=50"
    "&attempts=3&backoff_s=0.01&max_backoff_s=0.05&breaker_failures=50&breaker_reset_s=0.2"
)
# Where the server behaves, a loaded machine must not turn slowness into counted errors.
PATIENT = FAST.replace("read_timeout_s=0.3", "read_timeout_s=10").replace(
    "total_timeout_s=0.6", "total_timeout_s=20"
)
TARGETS = [(150.1, 2.2, "cosmos-a"), (150.2, 2.3, "cosmos-b"), (210.8, 54.35, "m101")]


@pytest.fixture
def survey() -> Iterator[FakeSurvey]:
    with fake_survey() as server:
        server.stall_s = 0.6
        yield server


def _targets(tmp_path: Path, rows: list[tuple[float, float, str]], extra: str = "") -> Path:
    path = tmp_path / "targets.csv"
    lines = ["ra,dec,name" + ("," + extra if extra else "")]
    lines += [f"{ra},{dec},{name}" + ("," + "x" if extra else "") for ra, dec, name in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(spec: str) -> tuple[list[RawImage], list[SourceFailure], dict[str, int]]:
    source = source_from_spec(spec)
    assert isinstance(source, SurveySource)
    items: list[SourceItem] = list(source)
    images = [i for i in items if isinstance(i, RawImage)]
    failures = [i for i in items if isinstance(i, SourceFailure)]
    stats = source.stats.snapshot()
    assert stats["targets"] == stats["yielded"] + stats["failed"] == len(items)
    return images, failures, stats


CASES = {
    # spec kind + options, route, (format, bands), parameters the documented interface names
    "sdss": ("sdss", "scale=0.4&size=48", "sdss", ("jpeg", 3), {"ra", "dec", "scale", "width"}),
    "decals-fits": ("decals", "size=48", "decals", ("fits", 3), {"layer", "pixscale", "bands"}),
    "decals-jpeg": ("decals", "format=jpeg&size=48", "decals", ("jpeg", 3), {"layer", "size"}),
    "panstarrs": ("panstarrs", "size=48&filter=i", "ps1", ("fits", 1), {"red", "format"}),
    "ztf-irsa": ("ztf-irsa", "size=48&filter=zr", "irsa", ("fits", 1), {"center", "gzip"}),
    "hst": ("hst", "size=48&dataset=hst_10188_10_acs_wfc_f814w", "hla", ("fits", 1), {"red"}),
    "galaxyzoo": ("galaxyzoo", "size=48", "sdss", ("jpeg", 3), {"scale", "width"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_survey_yields_every_target_as_a_valid_cutout(
    survey: FakeSurvey, tmp_path: Path, case: str
) -> None:
    kind, options, route, (fmt, bands), params = CASES[case]
    targets = _targets(tmp_path, TARGETS)
    spec = f"{kind}:{targets}?{options}&base_url={survey.base_url(route)}&{PATIENT}"
    images, failures, stats = _run(spec)
    assert not failures and stats["errors"] == 0
    assert [i.provenance["target"] for i in images] == [name for *_, name in TARGETS]
    for image, (ra, dec, _) in zip(images, TARGETS, strict=True):
        assert (image.format, image.bands, image.width, image.height) == (fmt, bands, 48, 48)
        assert (image.ra, image.dec) == (ra, dec)
        assert decode_pixels(image.pixels, image.format).shape == (48, 48, bands)
        assert image.source == kind and image.survey == kind
    last = [q for r, q in survey.requests if r == route][-1]
    assert params <= set(last), last
    if kind == "panstarrs":
        assert last["red"].endswith(".stk.i.unconv.fits")
    if kind == "ztf-irsa":  # the most recent of the two images the search found
        assert images[0].provenance["filefracday"] == "20210304112233"


def test_a_hostile_network_costs_retries_never_a_target(survey: FakeSurvey, tmp_path: Path) -> None:
    clean_targets = [(10.0 + i, 20.0 + i, f"t{i}") for i in range(8)]
    targets = _targets(tmp_path, clean_targets)
    base = survey.base_url("decals")
    clean, _, _ = _run(f"decals:{targets}?size=32&base_url={base}&{FAST}")
    faults = [
        "429",
        "500",
        "500",
        "reset",
        "timeout",
        "cut",
        "truncated",
        "html200",
        "json200",
        "drip",
        "503",
    ]
    survey.plan("decals", faults)
    survey.retry_after = "0"
    images, failures, stats = _run(f"decals:{targets}?size=32&base_url={base}&{FAST}")
    assert not failures
    # every target, each image bit-identical to the clean run's (so never a corrupt one)
    assert sorted((i.provenance["target"], i.pixels) for i in images) == sorted(
        (i.provenance["target"], i.pixels) for i in clean
    )
    expected = {
        "errors.Http429": 1,
        "errors.Http500": 2,
        "errors.Http503": 1,
        "errors.ConnectionError": 2,
        "errors.ReadTimeout": 1,
        "errors.TruncatedFits": 1,
        "errors.HtmlErrorPage": 1,
        "errors.JsonErrorPage": 1,
        "errors.SlowResponse": 1,
    }
    assert {k: v for k, v in stats.items() if k.startswith("errors.")} == expected
    assert stats["errors"] == len(faults)
    assert stats["requests"] == len(faults) + len(clean_targets)
    assert stats["retries"] + stats["deferred"] == len(faults)


def test_targets_that_can_never_succeed_are_dead_letters_with_the_reason(
    survey: FakeSurvey, tmp_path: Path
) -> None:
    rows = [
        (30.0, 1.0, "blank"),
        (31.0, 1.0, "gone"),
        (32.0, 1.0, "small"),
        (33.0, 1.0, "down"),
        (34.0, 1.0, "fine"),
    ]
    targets = _targets(tmp_path, rows)
    with targets.open("a") as fh:
        fh.write("400.0,1.0,bad-ra\n")
    for (ra, dec, _), fault in zip(rows, ["blank", "404", "small", "503"], strict=False):
        survey.always[(ra, dec)] = fault
    spec = f"sdss:{targets}?size=32&rounds=2&base_url={survey.base_url('sdss')}&{FAST}"
    images, failures, stats = _run(spec)
    assert [i.provenance["target"] for i in images] == ["fine"]
    reasons = {f.key.split(":")[-1]: (f.error_class, f.message) for f in failures}
    assert {k: v[0] for k, v in reasons.items()} == {
        "blank": "BlankImage",
        "gone": "Http404",
        "small": "WrongSize",
        "down": "Http503",
        "bad row": "BadTarget",
    }
    assert "gave up after 2 rounds of up to 3 attempts" in reasons["down"][1]
    assert "outside [0, 360)" in reasons["bad row"][1]
    assert stats["failed.Http503"] == 1 and stats["failed"] == 5
    # the permanent ones were asked once; the one that stayed down rounds x attempts times
    asked = [q for r, q in survey.requests if r == "sdss"]
    assert sum(1 for q in asked if q["ra"].startswith("33.")) == 2 * 3
    assert sum(1 for q in asked if q["ra"].startswith("31.")) == 1


def test_the_breaker_opens_rests_and_closes_without_losing_targets(
    survey: FakeSurvey, tmp_path: Path
) -> None:
    targets = _targets(tmp_path, [(50.0, 5.0, "a"), (51.0, 5.0, "b")])
    survey.plan("hla", ["500"] * 4)
    options = FAST.replace("breaker_failures=50", "breaker_failures=2").replace(
        "breaker_reset_s=0.2", "breaker_reset_s=0.3"
    )
    spec = f"hst:{targets}?dataset=x&size=32&rounds=5&base_url={survey.base_url('hla')}&{options}"
    images, failures, stats = _run(spec)
    assert not failures and [i.provenance["target"] for i in images] == ["a", "b"]
    assert stats["breaker_opened"] >= 2  # opened, the half-open probe failed, opened again
    assert stats["errors.Http500"] == 4
    # while open nothing was sent: every request the server saw is a 500 or a success
    assert survey.count("hla") == stats["requests"] == 4 + 2


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    targets = _targets(tmp_path, TARGETS)
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        source_from_spec(f"sdss:{targets}?colour=red")
    with pytest.raises(ConfigError, match="filter='q'"):
        source_from_spec(f"panstarrs:{targets}?filter=q")
    with pytest.raises(ConfigError, match="base_url='ftp://x'"):
        source_from_spec(f"decals:{targets}?base_url=ftp://x")
    with pytest.raises(ConfigError, match="no such file"):
        source_from_spec(f"hst:{tmp_path}/absent.csv")
    (tmp_path / "nohead.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ConfigError, match="no ra/dec column"):
        source_from_spec(f"ztf-irsa:{tmp_path}/nohead.csv")


def test_galaxy_zoo_catalog_columns_travel_in_provenance(
    survey: FakeSurvey, tmp_path: Path
) -> None:
    catalog = tmp_path / "gz2.csv"
    catalog.write_text(
        "dr7objid,ra,dec,t01_smooth_or_features_a02_features_or_disk_fraction\n"
        "587722981741363294,185.47,0.16,0.83\n"
    )
    base = survey.base_url("sdss")
    (image,), _, _ = _run(f"galaxyzoo:{catalog}?size=32&base_url={base}&{PATIENT}")
    assert image.provenance["target"] == "587722981741363294"
    assert image.provenance["catalog.t01_smooth_or_features_a02_features_or_disk_fraction"] == (
        "0.83"
    )
    assert np.isclose(image.ra or 0, 185.47)


def test_cone_targets_come_from_the_catalog_nearest_first(survey: FakeSurvey) -> None:
    catalog = survey.base_url("skysql")
    spec = (
        f"decals:cone:150.1,2.2,3?limit=4&format=jpeg&size=32&catalog_url={catalog}"
        f"&base_url={survey.base_url('decals')}&{FAST}"
    )
    images, failures, stats = _run(spec)
    assert not failures and len(images) == 4 and stats["targets"] == 4
    assert [i.provenance["target"] for i in images] == [
        str(1237650000000000000 + i) for i in range(4)
    ]
    assert all(i.ra is not None and 150.1 < i.ra < 150.1 + 3 / 60 for i in images)
    ((_, query),) = [r for r in survey.requests if r[0] == "skysql"]
    assert "dbo.fGetNearbyObjEq(150.1, 2.2, 3.0)" in query["cmd"] and "TOP 4" in query["cmd"]


def test_a_cone_query_that_fails_for_good_is_one_dead_letter(survey: FakeSurvey) -> None:
    survey.plan("skysql", ["html200"] * 3)
    spec = (
        f"sdss:cone:10,20,1?catalog_url={survey.base_url('skysql')}"
        f"&base_url={survey.base_url('sdss')}&{FAST}"
    )
    images, failures, stats = _run(spec)
    assert not images
    (letter,) = failures
    assert (letter.key, letter.error_class) == ("cone:10.0,20.0,1.0", "BadCatalogTable")
    assert stats["errors.BadCatalogTable"] == 3
    with pytest.raises(ConfigError, match="cone:10,95,1"):
        source_from_spec("sdss:cone:10,95,1")


def test_a_resting_survey_does_not_hold_up_the_other_sources(
    survey: FakeSurvey, tmp_path: Path
) -> None:
    from processors.ingest.sources import Interleaved
    from tests.ingest.test_allocation_draws import Endless

    targets = _targets(tmp_path, [(60.0, 6.0, "a"), (61.0, 6.0, "b")])
    survey.plan("hla", ["503"] * 4)
    options = FAST.replace("attempts=3", "attempts=2").replace(
        "breaker_failures=50", "breaker_failures=2"
    )
    spec = f"hst:{targets}?dataset=x&size=32&rounds=5&base_url={survey.base_url('hla')}&{options}"
    hst = source_from_spec(spec)
    assert isinstance(hst, SurveySource)
    mixed = Interleaved([hst, Endless("other")], idle_s=0.01)
    while_open = 0
    got: list[str] = []
    for item in mixed:
        if item.source == "other" and hst.http.breaker.state == "open":
            while_open += 1
        if isinstance(item, RawImage) and item.source == "hst":
            got.append(item.provenance["target"])
        if len(got) == 2:
            break
    assert sorted(got) == ["a", "b"]
    assert hst.stats.snapshot()["breaker_opened"] >= 1
    assert while_open > 0  # the other source was drawn from while the breaker rested


def test_a_service_that_stays_down_ends_in_dead_letters_not_a_hang(
    survey: FakeSurvey, tmp_path: Path
) -> None:
    rows = [(70.0, 7.0, "a"), (71.0, 7.0, "b"), (72.0, 7.0, "c")]
    targets = _targets(tmp_path, rows)
    for ra, dec, _ in rows:
        survey.always[(ra, dec)] = "503"
    options = FAST.replace("breaker_failures=50", "breaker_failures=2").replace(
        "breaker_reset_s=0.2", "breaker_reset_s=0.05"
    )
    spec = f"sdss:{targets}?size=32&rounds=2&base_url={survey.base_url('sdss')}&{options}"
    images, failures, stats = _run(spec)
    assert not images and [f.error_class for f in failures] == ["Http503"] * 3
    assert all("gave up after 2 rounds" in f.message for f in failures)
    assert stats["breaker_opened"] >= 1
