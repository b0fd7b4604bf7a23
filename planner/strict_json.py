"""Strict reading of a JSON document: every value knows its path, so a message names
the field (`plan.json: candidates[3].estimate.memory.activations: missing`), and `done()`
rejects keys nobody asked for. Errors are PlanFileError."""

from __future__ import annotations

import json
import os
from typing import Any

from planner.errors import PlanFileError


class Node:
    """A JSON value with its path, for messages such as `plan.json: chosen.tr: ...`."""

    def __init__(self, value: Any, origin: str, path: str):
        self.value, self.origin, self.path = value, origin, path
        self.seen: set[str] = set()

    def fail(self, key: str | None, message: str) -> PlanFileError:
        where = ".".join(p for p in (self.path, key) if p)
        return PlanFileError(f"{self.origin}: {where or 'top level'}: {message}")

    def get(self, key: str) -> Any:
        if not isinstance(self.value, dict):
            raise self.fail(None, f"expected an object, got {type(self.value).__name__}")
        if key not in self.value:
            raise self.fail(key, "missing")
        self.seen.add(key)
        return self.value[key]

    def child(self, key: str) -> Node:
        return Node(self.get(key), self.origin, f"{self.path}.{key}" if self.path else key)

    def obj(self, key: str) -> Node:
        node = self.child(key)
        if not isinstance(node.value, dict):
            raise self.fail(key, f"expected an object, got {kind(node.value)}")
        return node

    def optional_obj(self, key: str) -> Node | None:
        return None if self.get(key) is None else self.obj(key)

    def list(self, key: str) -> list[Node]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {kind(value)}")
        base = f"{self.path}.{key}" if self.path else key
        return [Node(item, self.origin, f"{base}[{i}]") for i, item in enumerate(value)]

    def int(self, key: str, minimum: int = 0, optional: bool = False) -> Any:
        value = self.get(key)
        if optional and value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}{' or null' if optional else ''}, got {value!r}")
        return value

    def float(self, key: str, optional: bool = False) -> Any:
        value = self.get(key)
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise self.fail(key, f"expected a number >= 0{' or null' if optional else ''}, got {value!r}")
        return float(value)

    def str(self, key: str, optional: bool = False) -> Any:
        value = self.get(key)
        if optional and value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string{' or null' if optional else ''}, got {value!r}")
        return value

    def bool(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def value_str(self) -> str:
        if not isinstance(self.value, str):
            raise self.fail(None, f"expected a string, got {self.value!r}")
        return self.value

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            raise self.fail(None, f"unknown key(s) {', '.join(unknown)}")


def kind(value: Any) -> str:
    """A JSON type name for messages."""
    return "null" if value is None else type(value).__name__


MAX_JSON_BYTES = 1 << 30  # no input of lofi's is near 1 GiB (ActivityNet's results: ~50 MB)


_JSON_STARTS = frozenset(bytes([c]) for c in b'{["-0123456789tfn\xef')  # \xef: a UTF-8 byte-order mark


class JsonLimitError(json.JSONDecodeError):
    """A JSON file too large or nested too deeply to parse safely; callers that catch
    JSONDecodeError report it as any other malformed file."""


def read_json_file(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse the JSON file `path`, reading at most `limit` bytes (a device such as
    /dev/zero, or a huge file, is refused instead of exhausting memory) and refusing
    nesting deeper than Python can parse. Raises OSError (unreadable), UnicodeDecodeError
    (not UTF-8) or json.JSONDecodeError (malformed, too large, too deep)."""
    chunks, size = [], 0
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > limit:  # a regular file: refused without reading
                raise JsonLimitError(f"larger than {limit >> 20} MiB, not read", "", 0)
            while size <= limit:
                chunk = handle.read(min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                if not chunks:
                    _check_start(chunk)
                chunks.append(chunk)
                size += len(chunk)
        if size > limit:
            raise JsonLimitError(f"larger than {limit >> 20} MiB, not read", "", 0)
        text = b"".join(chunks).decode("utf-8")
    except MemoryError:
        raise JsonLimitError("too large to read in the memory available", "", 0) from None
    del chunks
    return parse_json(text)


def _check_start(chunk: bytes) -> None:
    """Refuse at once what cannot be JSON (/dev/zero, a binary file) instead of reading
    up to the limit first."""
    first = chunk.lstrip()[:1]
    if first and first not in _JSON_STARTS:
        raise JsonLimitError(f"starts with {first!r}, not a JSON value", "", 0)


def parse_json(text: str) -> Any:
    """json.loads, with nesting deeper than the recursion limit (a RecursionError) or a
    document too large for memory reported as a JSONDecodeError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JsonLimitError("nested too deeply", text, 0) from None
    except MemoryError:
        raise JsonLimitError("too large to parse in the memory available", text, 0) from None
