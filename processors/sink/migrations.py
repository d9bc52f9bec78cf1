"""Apply the numbered DDL files of ``infra/clickhouse`` to a ClickHouse database, once each.

A migration is a file ``NNN_description.sql`` (``NNN`` its version, unique). Invariants:

- Files are applied in ascending version order, statement by statement, and a version is
  recorded in ``schema_migrations`` only after all its statements succeeded; so running
  :func:`apply_migrations` again is a no-op, and after a failure it resumes at the failed file.
- ClickHouse DDL is not transactional: a file that fails halfway leaves its earlier statements
  applied, which is why every statement must be idempotent (``CREATE TABLE IF NOT EXISTS``,
  ``ADD COLUMN IF NOT EXISTS``).
- An applied file must not change: a checksum mismatch raises :class:`MigrationError`; change
  the schema with a new numbered file instead. The one exception is an edit of comments only:
  the edited file names the checksum it had before in a line ``-- earlier checksum: <sha256>``,
  and a database that recorded that checksum accepts the file (and records nothing new).
  Nothing checks that only comments changed: the line is a promise made in review.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from processors.core.exceptions import SkyloopError

__all__ = [
    "MIGRATIONS_TABLE",
    "Migration",
    "MigrationError",
    "applied_versions",
    "apply_migrations",
    "default_ddl_dir",
    "load_migrations",
    "split_statements",
]

MIGRATIONS_TABLE = "schema_migrations"
_FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_.-]+)\.sql$")
_EARLIER_CHECKSUM = re.compile(r"^-- earlier checksum: ([0-9a-f]{64})$", re.MULTILINE)
_BOOTSTRAP = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String COMMENT 'sha256 of the file',
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
COMMENT 'DDL files of infra/clickhouse applied to this database'
"""


class MigrationError(SkyloopError):
    """A DDL file is misnamed, changed after it was applied, or failed; the message names it."""


@dataclass(frozen=True)
class Migration:
    """One numbered DDL file, split into statements."""

    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[str, ...]
    earlier_checksums: frozenset[str] = frozenset()
    """Checksums of comment-only earlier versions of the file (its ``-- earlier checksum:``
    lines), accepted where they were recorded."""


def default_ddl_dir() -> Path:
    """The repository's ``infra/clickhouse`` folder."""
    return Path(__file__).resolve().parents[2] / "infra" / "clickhouse"


def split_statements(sql: str) -> list[str]:
    """Split SQL text on ``;`` outside quotes and comments; drop comment-only pieces.

    Handles ``'...'`` (with ``''`` and backslash escapes), ``"..."``, backquoted identifiers,
    ``-- line`` and ``/* block */`` comments. Comments inside a statement are kept verbatim.

    >>> split_statements("SELECT ';'; -- a; b\\nSELECT 2;")
    ["SELECT ';'", 'SELECT 2']
    """
    statements: list[str] = []
    begin: int | None = None
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch == ";":
            if begin is not None:
                statements.append(sql[begin:i].strip())
            begin = None
            i += 1
            continue
        if begin is None and not ch.isspace():
            begin = i
        i += 1
        if ch in "'\"`":
            while i < n:
                if sql[i] == "\\" or (sql[i] == ch and sql[i + 1 : i + 2] == ch):
                    i += 2  # an escaped or doubled quote
                elif sql[i] == ch:
                    break
                else:
                    i += 1
            i += 1
    if begin is not None:
        statements.append(sql[begin:].strip())
    return statements


def load_migrations(ddl_dir: Path | None = None) -> list[Migration]:
    """The migrations of ``ddl_dir`` in version order; every ``*.sql`` must be well named."""
    ddl_dir = ddl_dir or default_ddl_dir()
    if not ddl_dir.is_dir():
        raise MigrationError(f"DDL directory not found: {ddl_dir}")
    by_version: dict[int, Migration] = {}
    for path in sorted(ddl_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path}: DDL files are named NNN_description.sql (e.g. 002_add_column.sql)"
            )
        version = int(match.group(1))
        if version in by_version:
            raise MigrationError(
                f"{path.name} and {by_version[version].path.name} share version {version}"
            )
        text = path.read_text(encoding="utf-8")
        statements = tuple(split_statements(text))
        if not statements:
            raise MigrationError(f"{path}: no SQL statements")
        by_version[version] = Migration(
            version=version,
            name=path.name,
            path=path,
            checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            statements=statements,
            earlier_checksums=frozenset(_EARLIER_CHECKSUM.findall(text)),
        )
    return [by_version[v] for v in sorted(by_version)]


def applied_versions(client: Client) -> dict[int, str]:
    """Version → checksum of every migration recorded in the client's database."""
    client.command(_BOOTSTRAP)
    rows = client.query(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} FINAL").result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def apply_migrations(client: Client, ddl_dir: Path | None = None) -> list[str]:
    """Apply the pending migrations of ``ddl_dir`` (default: the repo's ``infra/clickhouse``).

    Returns the file names applied by this call, in order (empty when up to date). Raises
    :class:`MigrationError` naming the file (and statement) that is malformed, was changed
    after being applied, or failed in ClickHouse; earlier files stay applied and recorded.
    """
    migrations = load_migrations(ddl_dir)
    done = applied_versions(client)
    applied: list[str] = []
    for migration in migrations:
        recorded = done.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum and recorded not in migration.earlier_checksums:
                raise MigrationError(
                    f"{migration.name} changed after it was applied to this database (checksum "
                    f"{recorded[:12]} recorded, {migration.checksum[:12]} now); add a new "
                    "numbered file instead of editing an applied one"
                )
            continue
        for number, statement in enumerate(migration.statements, start=1):
            try:
                client.command(statement)
            except ClickHouseError as exc:
                head = " ".join(statement.split())[:80]
                raise MigrationError(
                    f"{migration.path}: statement {number} of {len(migration.statements)} "
                    f"failed ({head} ...): {exc}"
                ) from exc
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration.name)
    return applied
