"""Typed errors of skyloop: each user-caused error names what was wrong and what is accepted."""

from __future__ import annotations

__all__ = [
    "BadImageError",
    "CatalogError",
    "CodecError",
    "ConfigError",
    "CorruptMessageError",
    "DatasetError",
    "DetectorError",
    "EvaluationError",
    "FetchError",
    "ImageTooLargeError",
    "PermanentFetchError",
    "SchemaError",
    "SkyloopError",
    "SourceError",
    "StackError",
    "StoreUnavailableError",
    "TapError",
    "TapUnavailableError",
    "TrainingError",
    "TrainingTimeoutError",
    "TransientFetchError",
    "UnknownSchemaError",
]


class SkyloopError(Exception):
    """Base of every error skyloop raises on purpose."""


class ConfigError(SkyloopError):
    """A configuration key has a bad value; the message names the key and the accepted values."""


class SchemaError(SkyloopError):
    """An Avro schema file is missing or invalid."""


class CodecError(SkyloopError):
    """A message could not be encoded or decoded."""


class UnknownSchemaError(CodecError):
    """A message names a writer schema this process does not know."""


class CorruptMessageError(CodecError):
    """A message's bytes do not match its writer schema (or carry no schema header)."""


class BadImageError(SkyloopError):
    """Pixels that cannot be scored: undecodable, empty, NaN, wrong shape."""


class ImageTooLargeError(BadImageError):
    """An image over the pixel limit (a decompression bomb), refused before it is decoded."""


class SourceError(SkyloopError):
    """An image source failed to deliver an item (unreachable, malformed input)."""


class StackError(SkyloopError):
    """The embedded local stack (broker, ClickHouse) failed to start or stop."""


class CatalogError(SkyloopError):
    """A cross-match catalog cannot be loaded: missing file, missing column, bad values.

    The message names the catalog, the file and the column at fault."""


class TapError(SkyloopError):
    """A TAP service answered a query with an error or a response that is not a VOTable."""


class TapUnavailableError(TapError):
    """A TAP service failed every retry, or its circuit is open after repeated failures."""


class DetectorError(SkyloopError):
    """A detector model cannot be loaded or gave outputs that cannot be boxes (NaN, garbage)."""


class TrainingError(SkyloopError):
    """A detector training run failed; the message ends with the tail of its log."""


class TrainingTimeoutError(TrainingError):
    """A detector training run ran past its time limit and was killed."""


class TrainingCancelledError(TrainingError):
    """A detector training run was stopped because its worker is stopping; it answers nothing
    (its request stays open in the control log, for the next start to train again)."""


class DatasetError(SkyloopError):
    """A training sample cannot be written: a bad image id, label or box (the message names it)."""


class EvaluationError(SkyloopError):
    """A detection metric is undefined for its inputs (no truth boxes, mismatched image counts)."""


class FetchError(SourceError):
    """A survey request failed; ``error_class`` names how (``Http503``, ``ReadTimeout``,
    ``HtmlErrorPage``, ``BlankImage``, ...), the key of the source's error counters."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message


class TransientFetchError(FetchError):
    """A failure that may pass (throttling, server errors, timeouts, resets, a truncated or
    error-page payload): the request is tried again later. ``retry_after_s`` is the server's
    ``Retry-After``, when it sent one."""

    def __init__(self, error_class: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(error_class, message)
        self.retry_after_s = retry_after_s


class PermanentFetchError(FetchError):
    """A failure that asking again cannot fix (404, a bad request, a blank cutout outside the
    survey's footprint, the wrong size): the target becomes a dead letter with this reason."""


class StoreUnavailableError(SkyloopError):
    """A store (ClickHouse) could not be reached or refused a write; the batch is intact.

    Raised by a processor's ``process``; the runner retries the same batch with back-off and
    commits nothing until it succeeds (see :mod:`processors.core.runner`).
    """
