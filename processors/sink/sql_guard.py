"""Read-only SQL: what ``skyloop sql`` and the sink's query endpoint run, and what they refuse.

Three layers, each enough for the common case on its own, checked in this order:

1. **ClickHouse's own limits** on a client of its own (:func:`read_only`): ``readonly = 1`` (no
   writes, no DDL, no ``SET``, no ``SETTINGS`` that change a value; table functions that reach
   outside the database — ``file``, ``url``, ``s3``, ``remote``, ``mysql``, ``executable``, … —
   are refused by the engine as well), set *after* the bounds it then freezes:
   ``max_execution_time`` (a query cannot hold the sink's lock for long), result rows, bytes and
   memory, introspection and chdb's ``Python()`` table function off.
2. **ClickHouse's parser** (:func:`check`): the query is parsed by the engine
   (``formatQuerySingleLine``: one statement, or a syntax error) and its tree read back
   (``EXPLAIN AST``). Refused: a statement that is not a read (``INSERT``, ``DROP``, ``ALTER``,
   ``SET``, ``SYSTEM``, ``KILL``, ``OPTIMIZE``, ``USE``, …), ``INTO OUTFILE`` and ``FORMAT``
   (which ``readonly`` lets through: measured, ``INTO OUTFILE`` wrote a file under
   ``readonly = 1``), a table function outside :data:`ALLOWED_TABLE_FUNCTIONS`, and a function
   that reaches outside anywhere in the query (the scalar ``file()`` reads any file under
   ``readonly = 1``).
3. **A pattern check** on the engine's canonical text with literals and quoted names removed:
   ``INTO OUTFILE``, ``FROM INFILE`` and calls of those functions, should the tree's spelling
   ever change.

What runs is the canonical text the checks saw (ARCHITECTURE.md, "The local stack").
Invariant: :func:`answer` never runs a statement :func:`check` refused, and a refusal raises
:class:`QueryRefused` (a :class:`ConfigError`: exit code 2) naming what was refused and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from processors.core.exceptions import ConfigError, SkyloopError

if TYPE_CHECKING:
    from processors.core.clickhouse import Client

__all__ = [
    "ALLOWED_TABLE_FUNCTIONS",
    "DIRECT",
    "LIVE",
    "Bounds",
    "QueryRefused",
    "answer",
    "check",
    "read_only",
]


@dataclass(frozen=True)
class Bounds:
    """What one query may take: seconds, result rows and bytes, memory (the engine enforces)."""

    timeout_s: float
    rows: int
    bytes: int
    memory: int


LIVE = Bounds(timeout_s=5, rows=200_000, bytes=128 << 20, memory=1 << 30)
"""Through the sink's endpoint: the query holds the lock the sink's inserts take, in its process."""
DIRECT = Bounds(timeout_s=120, rows=2_000_000, bytes=1 << 30, memory=4 << 30)
"""On a finished run's files: nothing else waits for them."""

ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "primes",
        "values",
        "null",
        "view",
        "merge",
        "generaterandom",
    }
)
"""Table functions that only compute or read this database's tables (lower-case names)."""

EXTERNAL_FUNCTIONS = frozenset(
    {
        *("file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn"),
        *("hdfs", "hdfscluster", "azureblobstorage", "azureblobstoragecluster", "iceberg"),
        *("deltalake", "hudi", "paimon", "remote", "remotesecure", "cluster"),
        *("clusterallreplicas", "mysql", "postgresql", "mongodb", "redis", "sqlite", "jdbc"),
        *("odbc", "executable", "input", "dictionary", "python", "arrowstream", "ytsaurus"),
        *("bigquery", "eval", "filesystem", "loop", "viewexplain", "viewifpermitted"),
    }
)
"""Functions refused anywhere in a query: they reach files, the network, processes or the
calling process. The engine's own list of table functions (``system.table_functions``, less
the allowed ones) is added to it at the first check."""
_SCALAR_SAFE = frozenset({"format", "fuzzquery"})
"""Names that are table functions and harmless scalar functions as well."""

READS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "ShowTables",
        "ShowColumns",
        "DescribeQuery",
        "ExistsTableQuery",
        "ShowCreateTableQuery",
        "Explain",
    }
)
"""Statement kinds (``EXPLAIN AST``'s names) that only read."""
_NESTED_OK = READS | {"SelectQuery", "TablesInSelectQuery"}
_WHY = {
    "INSERT": "it writes data",
    "DELETE": "it deletes data",
    "UPDATE": "it changes data",
    "OPTIMIZE": "it rewrites the table's parts",
    "SET": "it changes settings",
    "USE": "it changes the session's database",
    "SYSTEM": "it administers the engine",
    "KILL": "it cancels queries",
    "GRANT": "it changes access rights",
    "REVOKE": "it changes access rights",
    "BACKUP": "it writes a backup",
    "RESTORE": "it restores a backup",
    **dict.fromkeys(
        ("DROP", "TRUNCATE", "ALTER", "CREATE", "RENAME", "DETACH", "ATTACH", "EXCHANGE"),
        "it changes the schema or deletes data",
    ),
}
"""Why a statement is refused, by its first word (others: :data:`_OTHER`)."""
_OTHER = "it is not a plain read of the tables"
_ACCEPTED = "accepted: SELECT, WITH, SHOW TABLES/COLUMNS/CREATE, DESCRIBE, EXISTS, EXPLAIN"
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b|\bFROM\s+INFILE\b", re.IGNORECASE)
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_CODE = re.compile(r"Code: (\d+)\.")


class QueryRefused(ConfigError):
    """A query ``skyloop sql`` does not run: it writes, changes settings or reaches outside."""


def read_only(client: Client, bounds: Bounds) -> Client:
    """Make ``client`` (one no other code writes through) read-only for the rest of its life.

    The bounds are set first and ``readonly = 1`` last, so a query can change none of them.
    """
    for key, value in (
        ("max_execution_time", bounds.timeout_s),
        ("timeout_overflow_mode", "throw"),
        ("max_result_rows", bounds.rows),
        ("max_result_bytes", bounds.bytes),
        ("result_overflow_mode", "throw"),
        ("max_memory_usage", bounds.memory),
        ("allow_introspection_functions", 0),
        ("allow_python_table_function", 0),
        ("allow_ddl", 0),
        ("readonly", 1),
    ):
        try:
            client.set_client_setting(key, value)
        except Exception as exc:  # an engine without the setting: the other layers remain
            if key == "readonly":
                raise SkyloopError(f"cannot make the query client read-only: {exc}") from exc
    return client


@dataclass
class _Node:
    kind: str
    name: str
    parent: _Node | None
    children: list[_Node] = field(default_factory=list)


def _tree(explained: str) -> _Node:
    """``EXPLAIN AST`` text (one node a line, one space of indent per level) as a tree."""
    root: _Node | None = None
    stack: list[_Node] = []
    for line in explained.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        words = line.split()
        name = words[1].strip("`") if len(words) > 1 and not words[1].startswith("(") else ""
        del stack[depth:]
        node = _Node(words[0], name, stack[-1] if stack else None)
        if node.parent is not None:
            node.parent.children.append(node)
        elif root is None:
            root = node
        stack.append(node)
    if root is None:
        raise SkyloopError("the query parsed to nothing")
    return root


def _walk(node: _Node) -> list[_Node]:
    out = [node]
    for child in node.children:
        out.extend(_walk(child))
    return out


_external_cache: dict[str, frozenset[str]] = {}


def _external(client: Client) -> frozenset[str]:
    """:data:`EXTERNAL_FUNCTIONS` and the engine's table functions not allowed (cached)."""
    if "names" not in _external_cache:
        try:
            rows = client.query("SELECT lower(name) FROM system.table_functions").result_rows
            names = {str(r[0]) for r in rows} - ALLOWED_TABLE_FUNCTIONS - _SCALAR_SAFE
        except Exception:
            names = set()
        _external_cache["names"] = EXTERNAL_FUNCTIONS | names
    return _external_cache["names"]


def _refuse(what: str, why: str) -> QueryRefused:
    return QueryRefused(f"refused: {what}: {why}; skyloop sql is read-only ({_ACCEPTED})")


def _statement_word(text: str) -> str:
    return text.split()[0].upper() if text.split() else "the statement"


def check(client: Client, sql: str) -> str:
    """The engine's canonical single-line text of ``sql``; raises :class:`QueryRefused`.

    A syntax error raises :class:`SkyloopError` with the engine's message.
    """
    quoted = "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"
    try:
        text = str(client.query(f"SELECT formatQuerySingleLine({quoted})").result_rows[0][0])
    except Exception as exc:
        if "Multi-statements" in str(exc):
            raise _refuse("several statements", "send one statement at a time") from None
        raise _failure(exc, sql, "query does not parse") from None
    try:
        root = _tree(client.command(f"EXPLAIN AST {text}"))  # type: ignore[arg-type]
    except Exception as exc:
        raise _failure(exc, text, "query does not parse") from None
    if root.kind not in READS:
        word = _statement_word(text)
        raise _refuse(word, _WHY.get(word, _OTHER))
    external = _external(client)
    for node in _walk(root):
        if node.kind.endswith("Query") and node.kind not in _NESTED_OK:
            raise _refuse(node.kind.removesuffix("Query").upper(), "a statement inside a read")
        if node.kind == "SelectWithUnionQuery":
            for child in node.children:
                if child.kind == "Literal":
                    raise _refuse("INTO OUTFILE", "it writes a file")
                if child.kind == "Identifier":
                    raise _refuse("FORMAT", "skyloop sql formats results itself (--format)")
        if node.kind != "Function":
            continue
        name = node.name.lower()
        table = node.parent is not None and node.parent.kind == "TableExpression"
        if (table and name not in ALLOWED_TABLE_FUNCTIONS) or name in external:
            raise _refuse(
                f"{node.name}()",
                "it reaches outside the database (files, network, processes); table functions "
                f"allowed: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}",
            )
    bare = _QUOTED.sub("''", text)
    if _OUTFILE.search(bare):
        raise _refuse("INTO OUTFILE / FROM INFILE", "it reads or writes a file")
    for name in re.findall(r"\b(\w+)\s*\(", bare):
        if name.lower() in external and name.lower() not in ALLOWED_TABLE_FUNCTIONS:
            raise _refuse(f"{name}()", "it reaches outside the database")
    return text


def _message(exc: Exception) -> str:
    text = str(exc).strip()
    at = text.find("Code: ")
    return (text[at:] if at > 0 else text).split("\n")[0]


def answer(client: Client, sql: str, bounds: Bounds) -> tuple[list[str], list[Sequence[Any]]]:
    """Check ``sql`` and run it on a :func:`read_only` client: ``(columns, rows)``.

    Raises :class:`QueryRefused` for what :func:`check` or the engine's read-only mode refuses,
    and :class:`SkyloopError` for any other failure (a timeout or a result over the bounds named
    as such).
    """
    text = check(client, sql)
    try:
        result = client.query(text)
    except Exception as exc:
        raise _failure(exc, text, "query failed", bounds) from None
    return list(result.column_names), list(result.result_rows)


def _failure(exc: Exception, text: str, what: str, bounds: Bounds = LIVE) -> SkyloopError:
    """The error to raise for the engine's ``exc``: a refusal for its read-only mode's."""
    message = _message(exc)
    code = _CODE.search(message)
    number = int(code.group(1)) if code else 0
    if number == 164:  # READONLY
        return _refuse(_statement_word(text), message)
    if number == 159:  # TIMEOUT_EXCEEDED
        return SkyloopError(
            f"query ran past its {bounds.timeout_s:g} s limit (a query may not hold the store for "
            f"longer; narrow it, or ask again after the run): {message}"
        )
    if number == 396:  # TOO_MANY_ROWS_OR_BYTES
        return SkyloopError(
            f"query result over {bounds.rows} rows or {bounds.bytes >> 20} MiB (add a LIMIT, "
            f"or ask after the run): {message}"
        )
    return SkyloopError(f"{what}: {message}")
