"""Rows of a query answer as text: an aligned table, CSV, TSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["TableFormat", "format_table"]

TableFormat = Literal["table", "csv", "json", "tsv"]


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """``rows`` under ``columns`` in ``fmt``; the text ends with a newline.

    ``table`` pads every column to its widest cell (values as ``str``); ``json`` is a list of
    objects keyed by column; ``csv`` quotes as the csv module does; ``tsv`` does not quote.

    >>> print(format_table(["source", "n"], [["sky", 3], ["ztf", 5]], "table"), end="")
    source  n
    ------  -
    sky     3
    ztf     5
    >>> format_table(["a", "b"], [[1, "x,y"]], "csv")
    'a,b\\n1,"x,y"\\n'
    """
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "json":
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=1) + "\n"
    if fmt == "tsv":
        lines = ["\t".join(columns), *("\t".join(str(v) for v in r) for r in rows)]
        return "\n".join(lines) + "\n"
    cells = [[str(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
        *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells),
    ]
    return "\n".join(lines) + "\n"
