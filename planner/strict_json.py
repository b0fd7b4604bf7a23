"""The one strict reader of the project's JSON files (plans, configs, profiles, overheads,
a workload's evidence, annotations, results).

`read_json_document` reads a file capped in size and depth (`read_json_file`) and turns
every way it can fail into one error of the caller's type naming the file (missing, a
directory, unreadable, not UTF-8, malformed with line and column, too large or too
deep). `Node` then gives typed access in which every value knows its path, so a message
names the field (`plan.json: candidates[3].estimate.memory.activations: missing`),
`fields()` checks an object's keys against the known and required ones, and `done()`
rejects keys nobody asked for; `build_dataclass` makes a frozen dataclass of an object
that way. Errors are the caller's type (PlanFileError unless given)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from planner.errors import PlanFileError


def read_json_document(path: str | os.PathLike, error: type[Exception], what: str = "JSON file", *,
                       missing_hint: str = "") -> Any:
    """The JSON value in `path` (read by `read_json_file`); any failure is one `error`
    whose message names `what` and the file (and, for a missing file, `missing_hint`)."""
    path = Path(path)
    try:
        return read_json_file(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}{missing_hint}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except OSError as failure:
        raise error(f"cannot read {what} {path}: {failure.strerror or failure}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as failure:
        raise error(f"{path}: not valid JSON (line {failure.lineno}, column {failure.colno}: {failure.msg})") from None


class Node:
    """A JSON value with its path, for messages such as `plan.json: chosen.tr: ...`;
    errors are `error` (PlanFileError by default)."""

    def __init__(self, value: Any, origin: str, path: str = "", error: type[Exception] = PlanFileError):
        self.value, self.origin, self.path, self.error = value, origin, path, error
        self.seen: set[str] = set()

    def fail(self, key: str | None, message: str) -> Exception:
        where = ".".join(p for p in (self.path, key) if p)
        return self.error(f"{self.origin}: {where or 'top level'}: {message}")

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fields(self, known: Collection[str], required: Collection[str] = ()) -> dict[str, Any]:
        """This object's keys and values, all marked seen: an error for a key not in
        `known` (naming the known ones) and for a `required` key that is absent."""
        if not isinstance(self.value, dict):
            raise self.fail(None, f"expected an object, got {kind(self.value)}")
        unknown = sorted(set(self.value) - set(known))
        if unknown:
            raise self.fail(None, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        missing = sorted(set(required) - set(self.value))
        if missing:
            raise self.fail(None, f"missing key(s) {', '.join(missing)}")
        self.seen.update(self.value)
        return dict(self.value)

    def get(self, key: str) -> Any:
        if not isinstance(self.value, dict):
            raise self.fail(None, f"expected an object, got {type(self.value).__name__}")
        if key not in self.value:
            raise self.fail(key, "missing")
        self.seen.add(key)
        return self.value[key]

    def child(self, key: str) -> Node:
        return Node(self.get(key), self.origin, self._at(key), self.error)

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
        base = self._at(key)
        return [Node(item, self.origin, f"{base}[{i}]", self.error) for i, item in enumerate(value)]

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


def build_dataclass(node: Node, cls: type, nested: Mapping[str, type] | None = None) -> Any:
    """The frozen dataclass `cls` from the object `node`: its keys must be fields of `cls`
    (the ones without a default required); the value of a key named in `nested` (unless
    null) is built the same way as that dataclass. A value `cls` refuses (a ValueError
    or TypeError from its checks) is an error naming the object's path."""
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    values = node.fields([f.name for f in fields], required)
    nested = nested or {}
    for key, value in values.items():
        if key in nested and value is not None:
            values[key] = build_dataclass(node.child(key), nested[key], nested)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise node.fail(None, str(error)) from None


def kind(value: Any) -> str:
    """A JSON type name for messages."""
    return "null" if value is None else type(value).__name__


MAX_JSON_BYTES = 1 << 30  # no input of the project's is near 1 GiB (the largest results files: ~50 MB)


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
