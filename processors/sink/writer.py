"""Write decoded topic records to ClickHouse, one insert per table per batch.

The Kafka consume loop (the sink processor) owns consuming and committing; this module is the
part that touches ClickHouse. The contract between them:

1. The loop decodes a batch of messages and calls :meth:`ClickHouseWriter.insert` (one topic)
   or :meth:`ClickHouseWriter.insert_many` (several topics).
2. ``insert`` builds every row first (pure, :mod:`processors.sink.rows`), then sends them in
   one ``INSERT`` per table with explicit column names. If any record does not fit, nothing is
   sent and :class:`~processors.sink.rows.RowError` names that record's coordinates.
3. The loop commits the batch's offsets only after ``insert`` has returned. If it crashes in
   between, the batch is re-delivered and inserted again: harmless, because every table is a
   ReplacingMergeTree on the record's identity and readers count with ``FINAL``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.insert import InsertContext

from processors.core.clickhouse import is_embedded
from processors.core.exceptions import StoreUnavailableError
from processors.sink.rows import KafkaCoordinates, Row, TableSpec, build_row, table_for_topic

__all__ = ["ClickHouseWriter", "SinkError", "SinkItem"]

_FILE_BUFFER = 8 << 20

SinkItem = tuple[Mapping[str, Any], int, int]
"""A decoded record with the partition and offset it was read at."""


class SinkError(StoreUnavailableError):
    """ClickHouse refused an insert or could not be reached; the batch was not (fully) written
    and must not be committed. The runner retries it (rows are re-inserted whole: harmless)."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseWriter:
    """Insert records of the five topics into their tables (see the module docstring).

    Guarantee: when :meth:`insert` returns, every row of the batch is stored in ClickHouse;
    when it raises, the caller must not commit the batch's offsets. Re-inserting rows that are
    already stored is harmless (ReplacingMergeTree + ``FINAL`` in queries). Rows go to the
    client's current database. Not thread-safe: use one writer per thread.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._contexts: dict[str, InsertContext] = {}

    def rows(self, topic: str, items: Sequence[SinkItem]) -> tuple[TableSpec, list[Row]]:
        """The table of ``topic`` and the rows of ``items``, in order (raises RowError)."""
        spec = table_for_topic(topic)
        rows: list[Row] = []
        for record, partition, offset in items:
            rows.append(build_row(spec, record, KafkaCoordinates(topic, partition, offset)))
        return spec, rows

    def insert(self, topic: str, items: Sequence[SinkItem]) -> int:
        """Insert the records of one topic in a single INSERT; returns the number of rows.

        ``topic`` may carry a prefix (``dev.scores``). An empty batch sends nothing.
        """
        spec, rows = self.rows(topic, items)
        if not rows:
            return 0
        self._send(spec, rows)
        return len(rows)

    def insert_many(self, batches: Mapping[str, Sequence[SinkItem]]) -> dict[str, int]:
        """Insert several topics' batches, one INSERT per table; returns rows per table.

        All rows are built before the first INSERT, so a record that does not fit stops the
        whole call before anything is written. Tables are written in the order given; on a
        ClickHouse error the earlier tables are written, which is harmless on a retry.
        """
        built: dict[str, tuple[TableSpec, list[Row]]] = {}
        for topic, items in batches.items():
            spec, rows = self.rows(topic, items)
            if spec.table in built:
                built[spec.table][1].extend(rows)
            else:
                built[spec.table] = (spec, rows)
        return self.insert_rows(built)

    def insert_rows(self, built: Mapping[str, tuple[TableSpec, Sequence[Row]]]) -> dict[str, int]:
        """Insert rows already built per table (one INSERT each); returns rows per table.

        For callers that build rows themselves, e.g. to set aside a record that does not fit
        (:class:`RowError`) without building the others twice. Same guarantee as ``insert``.
        """
        counts: dict[str, int] = {}
        for table, (spec, rows) in built.items():
            if rows:
                self._send(spec, rows)
            counts[table] = len(rows)
        return counts

    def insert_avro(self, table: str, container: Iterable[bytes | memoryview]) -> None:
        """Insert an Avro object container file, given as consecutive pieces, into ``table``
        (``FORMAT Avro``), parsed by ClickHouse itself; columns match the file's fields by name.

        All or nothing as far as the caller is concerned: when it raises :class:`SinkError`,
        nothing may be counted as stored (some rows may be, which a retry absorbs). The
        embedded engine reads a file, so the pieces go to one through a large buffer (one copy);
        a server gets them in one request body.
        """
        try:
            if is_embedded(self.client):
                with tempfile.NamedTemporaryFile(suffix=".avro", buffering=_FILE_BUFFER) as file:
                    file.file.writelines(container)  # one call; the wrapper's write costs per piece
                    file.flush()
                    self.client.command(
                        f"INSERT INTO {quote_identifier(table)} "
                        f"FROM INFILE {_sql_string(file.name)} FORMAT Avro"
                    )
            else:
                self.client.raw_insert(table, None, b"".join(container), fmt="Avro")
        except ClickHouseError as exc:
            raise SinkError(f"Avro insert into {table} failed: {exc}") from exc

    def _send(self, spec: TableSpec, rows: Iterable[Row]) -> None:
        context = self._contexts.get(spec.table)
        try:
            if context is None:
                context = self.client.create_insert_context(
                    table=spec.table, column_names=list(spec.columns)
                )
                self._contexts[spec.table] = context
            context.data = list(rows)
            self.client.insert(context=context)
        except ClickHouseError as exc:
            self._contexts.pop(spec.table, None)
            raise SinkError(f"insert into {spec.table} failed: {exc}") from exc
        finally:
            if context is not None:
                context.data = None
