"""Sky targets for the survey sources: a CSV of ``ra, dec[, name]`` (degrees, ICRS).

The first row is a header when it holds no number: then columns are found by name,
case-insensitively (``ra``/``ra_deg``/``raj2000``, ``dec``/``dec_deg``/``dej2000``, and
``name``/``id``/``objid``/``dr7objid``/``iauname`` for the name); every other column is kept
in ``extra`` (e.g. a Galaxy Zoo catalog's vote fractions). Without a header the columns are
``ra, dec[, name]`` in that order. Lines that are blank or start with ``#`` are skipped.

A row that is not a valid position is not dropped: it is a :class:`BadTarget` naming the line
and the reason, which the source turns into a dead letter. Targets keep file order.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processors.core.exceptions import ConfigError

__all__ = ["BadTarget", "Target", "read_targets"]

_RA = ("ra", "ra_deg", "raj2000", "ra_j2000")
_DEC = ("dec", "dec_deg", "dej2000", "dec_j2000", "decj2000")
_NAME = ("name", "id", "objid", "dr7objid", "dr8objid", "iauname", "object")


@dataclass(frozen=True)
class Target:
    ra: float
    dec: float
    name: str
    line: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identity of the target within its file (its name, else its position)."""
        return self.name or f"{self.ra:.6f},{self.dec:+.6f}"


@dataclass(frozen=True)
class BadTarget:
    line: int
    raw: str
    reason: str


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_targets(path: str | os.PathLike[str]) -> Iterator[Target | BadTarget]:
    """The file's targets in order; :class:`ConfigError` when it is missing or has no ra/dec."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"targets={str(file)!r}: no such file; give a CSV of ra, dec[, name]")
    with file.open(newline="", encoding="utf-8") as fh:
        rows = [(n, row) for n, row in enumerate(csv.reader(fh), start=1)]
    rows = [(n, r) for n, r in rows if r and any(c.strip() for c in r)]
    rows = [(n, r) for n, r in rows if not r[0].lstrip().startswith("#")]
    if not rows:
        return
    header = rows[0][1]
    columns = (0, 1, 2 if len(header) > 2 else None)
    named: list[str] = []
    if not any(_is_number(c) for c in header):
        ra, dec = _column(header, _RA), _column(header, _DEC)
        if ra is None or dec is None:
            raise ConfigError(
                f"targets={str(file)!r}: header {header!r} has no ra/dec column; "
                f"accepted names are {', '.join(_RA)} and {', '.join(_DEC)}"
            )
        columns = (ra, dec, _column(header, _NAME))
        named = [h.strip() for h in header]
        rows = rows[1:]
    for line, row in rows:
        yield _target(line, row, columns, named)


def _target(
    line: int, row: list[str], columns: tuple[int, int, int | None], named: list[str]
) -> Target | BadTarget:
    ra_at, dec_at, name_at = columns
    raw = ",".join(row)
    if max(ra_at, dec_at) >= len(row):
        return BadTarget(line, raw, "missing ra or dec")
    try:
        ra, dec = float(row[ra_at]), float(row[dec_at])
    except ValueError:
        return BadTarget(line, raw, f"ra={row[ra_at]!r}, dec={row[dec_at]!r} are not numbers")
    if not (math.isfinite(ra) and 0.0 <= ra < 360.0):
        return BadTarget(line, raw, f"ra={ra} is outside [0, 360)")
    if not (math.isfinite(dec) and -90.0 <= dec <= 90.0):
        return BadTarget(line, raw, f"dec={dec} is outside [-90, 90]")
    name = row[name_at].strip() if name_at is not None and name_at < len(row) else ""
    used = {ra_at, dec_at, name_at}
    extra = {named[i]: row[i].strip() for i in range(min(len(named), len(row))) if i not in used}
    return Target(ra, dec, name, line, extra)
