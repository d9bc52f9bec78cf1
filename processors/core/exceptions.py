"""Typed errors of skyloop: each user-caused error names what was wrong and what is accepted."""

from __future__ import annotations

__all__ = [
    "BadImageError",
    "CodecError",
    "ConfigError",
    "CorruptMessageError",
    "SchemaError",
    "SkyloopError",
    "SourceError",
    "StackError",
    "StoreUnavailableError",
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


class SourceError(SkyloopError):
    """An image source failed to deliver an item (unreachable, malformed input)."""


class StackError(SkyloopError):
    """The embedded local stack (broker, ClickHouse) failed to start or stop."""


class StoreUnavailableError(SkyloopError):
    """A store (ClickHouse) could not be reached or refused a write; the batch is intact.

    Raised by a processor's ``process``; the runner retries the same batch with back-off and
    commits nothing until it succeeds (see :mod:`processors.core.runner`).
    """
