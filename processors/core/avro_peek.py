"""Read a few leading fields of an Avro record body without decoding the rest.

A consumer that stores records elsewhere (the sink hands whole bodies to ClickHouse's own Avro
parser) may still need two or three fields in Python: an id to count, a flag to route by.
Decoding the whole record for them costs more than the rest of its path. :func:`compile_peek`
turns a writer schema into a small generated function that walks the body field by field,
skipping what it does not need, and stops after the last field asked for: bytes and strings are
skipped by their length, arrays and maps block by block, unions by their branch index.

It is not a validator: bytes that do not match the schema may give wrong values or raise
(``IndexError``, ``UnicodeDecodeError``, ``ValueError``), and nothing after the last wanted field
is looked at. Whoever peeks must still have the whole body checked (by a full decode or by the
store that parses it) before trusting it.

Example:
    >>> schema = {"type": "record", "name": "R", "fields": [
    ...     {"name": "id", "type": "string"},
    ...     {"name": "tags", "type": {"type": "array", "items": "string"}},
    ...     {"name": "flag", "type": "boolean"},
    ...     {"name": "blob", "type": "bytes"}]}
    >>> peek = compile_peek(schema, ("id", "flag"))
    >>> body = b"\\x04ab" + b"\\x04\\x02x\\x02y\\x00" + b"\\x01" + b"\\x06xyz"
    >>> peek(body, 0)
    ('ab', True)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["Peek", "compile_peek"]

Peek = Callable[[bytes, int], tuple[Any, ...]]
"""``peek(buffer, start)``: the wanted fields, in the order asked for, of the body at ``start``."""

_PRIMITIVE_SIZES = {"double": 8, "float": 4, "boolean": 1, "null": 0}


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint (int or long) at ``pos``: its value and the position after it."""
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


class _Generator:
    """Emits the lines of a peek function; ``p`` is the read position throughout."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.named: dict[str, Any] = {}
        self._temps = 0

    def temp(self) -> str:
        self._temps += 1
        return f"t{self._temps}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def long(self, depth: int, target: str) -> None:
        """Varints of one or two bytes (short strings, small counts, a 2.5 KB embedding's
        length) are decoded inline; longer ones by :func:`_long`."""
        byte, two = self.temp(), self.temp()
        self.emit(depth, f"{byte} = buf[p]")
        self.emit(depth, f"if {byte} < 128: {target} = ({byte} >> 1) ^ -({byte} & 1); p += 1")
        self.emit(depth, "elif buf[p + 1] < 128:")
        self.emit(depth + 1, f"{two} = ({byte} & 127) | (buf[p + 1] << 7)")
        self.emit(depth + 1, f"{target} = ({two} >> 1) ^ -({two} & 1); p += 2")
        self.emit(depth, f"else: {target}, p = _long(buf, p)")

    def skip_long(self, depth: int) -> None:
        """A varint whose value is not needed: step over its bytes."""
        self.emit(depth, "while buf[p] > 127: p += 1")
        self.emit(depth, "p += 1")

    def register(self, node: dict[str, Any]) -> None:
        name = node["name"]
        namespace = node.get("namespace")
        self.named[name] = node
        if namespace and "." not in name:
            self.named[f"{namespace}.{name}"] = node

    def read(self, node: Any, depth: int, target: str | None) -> None:
        """Code that reads ``node`` into ``target`` (or skips it when ``target`` is None)."""
        if isinstance(node, str) and node in self.named:
            node = self.named[node]
        if isinstance(node, list):
            self._union(node, depth, target)
        elif isinstance(node, dict):
            self._complex(node, depth, target)
        elif node in ("string", "bytes"):
            size = self.temp()
            self.long(depth, size)
            if target:
                value = f"buf[p:p + {size}]"
                value = f"str({value}, 'utf-8')" if node == "string" else f"bytes({value})"
                self.emit(depth, f"{target} = {value}")
            self.emit(depth, f"p += {size}")
        elif node in ("int", "long"):
            if target:
                self.long(depth, target)
            else:
                self.skip_long(depth)
        elif node in _PRIMITIVE_SIZES:
            if target:
                value = {
                    "double": "_double(buf, p)[0]",
                    "float": "_float(buf, p)[0]",
                    "boolean": "buf[p] == 1",
                    "null": "None",
                }[node]
                self.emit(depth, f"{target} = {value}")
            if _PRIMITIVE_SIZES[node]:
                self.emit(depth, f"p += {_PRIMITIVE_SIZES[node]}")
        else:
            raise ValueError(f"unknown Avro type {node!r}")

    def _union(self, branches: list[Any], depth: int, target: str | None) -> None:
        index = self.temp()
        self.long(depth, index)
        for k, branch in enumerate(branches):
            self.emit(depth, f"{'if' if k == 0 else 'elif'} {index} == {k}:")
            self.emit(depth + 1, "pass")
            self.read(branch, depth + 1, target)
        self.emit(depth, f"else: raise ValueError('union branch ' + str({index}))")

    def _complex(self, node: dict[str, Any], depth: int, target: str | None) -> None:
        kind = node["type"]
        if kind == "record":
            self.register(node)
            if target:
                raise ValueError("only primitive, enum and union-of-primitive fields can be read")
            for child in node["fields"]:
                self.read(child["type"], depth, None)
        elif kind == "enum":
            self.register(node)
            if target:
                index = self.temp()
                self.long(depth, index)
                self.emit(depth, f"{target} = {tuple(node['symbols'])!r}[{index}]")
            else:
                self.skip_long(depth)
        elif kind == "fixed":
            self.register(node)
            if target:
                self.emit(depth, f"{target} = bytes(buf[p:p + {node['size']}])")
            self.emit(depth, f"p += {node['size']}")
        elif kind in ("array", "map"):
            if target:
                raise ValueError("only primitive, enum and union-of-primitive fields can be read")
            count, size = self.temp(), self.temp()
            self.long(depth, count)
            self.emit(depth, f"while {count}:")
            self.emit(depth + 1, f"if {count} < 0:")  # a block that states its byte size
            self.long(depth + 2, size)
            self.emit(depth + 2, f"p += {size}")
            self.emit(depth + 1, "else:")
            self.emit(depth + 2, f"for _ in range({count}):")
            if kind == "map":
                self.read("string", depth + 3, None)
            self.read(node["items"] if kind == "array" else node["values"], depth + 3, None)
            self.long(depth + 1, count)
        else:  # a primitive with attributes, e.g. {"type": "long", "logicalType": ...}
            self.read(kind, depth, target)


def compile_peek(
    schema: dict[str, Any], fields: tuple[str, ...], spans: tuple[str, ...] = ()
) -> Peek:
    """A function reading ``fields`` (top-level fields of the record ``schema``) from a body,
    followed by the ``(start, end)`` positions of each field in ``spans`` (any type).

    ``schema`` is the writer schema, with its named types defined before use (as a fully
    inlined schema has them). Fields may be primitives, enums (their symbol), fixed or unions of
    those; logical types come back as their underlying value (a timestamp as its long).
    Raises ValueError for a field the schema lacks or cannot be read this way.

    >>> schema = {"type": "record", "name": "R", "fields": [
    ...     {"name": "id", "type": "string"}, {"name": "blob", "type": ["null", "bytes"]}]}
    >>> compile_peek(schema, ("id",), spans=("blob",))(b"\x04ab\x02\x06xyz", 0)
    ('ab', (3, 8))
    """
    names = [field["name"] for field in schema["fields"]]
    missing = [name for name in (*fields, *spans) if name not in names]
    if missing or not fields:
        raise ValueError(f"fields {missing or fields} not in {schema.get('name')}: {names}")
    gen = _Generator()
    gen.register(schema)
    gen.emit(1, "p = start")
    last = max(names.index(name) for name in (*fields, *spans))
    for index, field in enumerate(schema["fields"][: last + 1]):
        if field["name"] in spans:
            gen.emit(1, f"s{index} = p")
        gen.read(field["type"], 1, f"v{index}" if field["name"] in fields else None)
        if field["name"] in spans:
            gen.emit(1, f"v{index} = (s{index}, p)")
    wanted = ", ".join(f"v{names.index(name)}" for name in (*fields, *spans))
    gen.emit(1, f"return ({wanted},)")
    source = "def peek(buf, start):\n" + "\n".join(gen.lines)
    namespace: dict[str, Any] = {
        "_long": _long,
        "_double": struct.Struct("<d").unpack_from,
        "_float": struct.Struct("<f").unpack_from,
    }
    exec(compile(source, f"<peek {schema.get('name')}>", "exec"), namespace)
    peek: Peek = namespace["peek"]
    return peek
