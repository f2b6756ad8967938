"""Typed reads from a TOML table whose errors name the file and the field.

Every configuration file (devices, pipelines, search spaces) is read through a ``Fields`` view
so that a bad value stops with one line: ``FILE: FIELD: what is wrong (what was expected)``.
"""

from __future__ import annotations

import builtins
import math
import tomllib
from pathlib import Path
from typing import Any

from hurricane.errors import UserError

_MISSING = object()


class ConfigError(UserError):
    """A configuration file with a bad or missing field."""


def loads_toml(
    text: str, source: str, error_type: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error_type(f"{source}: not valid TOML: {exc}") from None


def dumps_toml(data: dict[str, Any], header: str = "") -> str:
    """A TOML document for ``data`` (strings, numbers, booleans, lists of them, nested tables)
    that ``tomllib`` reads back equal: what Hurricane writes for a user to keep and edit (a
    ready device spec, an accelerator design). tomllib only reads; the writer is small."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(d: dict[str, Any], path: str, out: list[str]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        if path:
            out.append(f"\n[{path}]")
        out.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, f"{path}.{k}" if path else k, out)

    lines = [f"# {line}" for line in header.splitlines()]
    table(data, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def read_toml(
    path: str | Path, what: str = "file", error_type: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise error_type(f"{path}: {what} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error_type(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "TOML files are UTF-8: save it in that encoding"
        ) from None
    return loads_toml(text, str(path), error_type)


class Fields:
    """A table of a TOML file, with the dotted path that leads to it. ``error_type`` is the
    ``ConfigError`` subclass its errors raise, so each kind of file keeps its own."""

    def __init__(
        self,
        table: Any,
        source: str,
        prefix: str = "",
        error_type: type[ConfigError] = ConfigError,
    ) -> None:
        self.source, self.prefix, self.error_type = source, prefix, error_type
        if not isinstance(table, dict):
            raise self.error("", f"expected a table, got {table!r}")
        self.table = table

    def where(self, key: str) -> str:
        return f"{self.prefix}{key}" if key else self.prefix.rstrip(".") or "(top level)"

    def error(self, key: str, msg: str) -> ConfigError:
        return self.error_type(f"{self.source}: {self.where(key)}: {msg}")

    def only(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.error(
                    key, f"unknown field (expected one of: {', '.join(sorted(allowed))})"
                )

    def has(self, key: str) -> bool:
        return key in self.table

    def _get(self, key: str, default: Any) -> Any:
        if key in self.table:
            return self.table[key]
        if default is _MISSING:
            raise self.error(key, "missing")
        return default

    def str(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        choices: tuple[builtins.str, ...] | None = None,
        empty: builtins.bool = False,
    ) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not (value or empty):
            what = "a string" if empty else "a non-empty string"
            raise self.error(key, f"expected {what}, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        lo: builtins.int | None = None,
        choices: tuple[builtins.int, ...] | None = None,
    ) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(str, choices))}, got {value}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        return value

    def float(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        lo: builtins.float | None = None,
        finite: builtins.bool = True,
    ) -> Any:
        """A number; ``nan`` and ``inf`` are refused unless the field says ``finite=False``."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {value!r}")
        if math.isnan(value) or (finite and math.isinf(value)):
            raise self.error(key, f"expected a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        return float(value)

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def int_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise self.error(key, f"expected a list of non-negative integers, got {value!r}")
        return value

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"expected a list of non-empty strings, got {value!r}")
        return value

    def sub(self, key: builtins.str, required: builtins.bool = False) -> Fields:
        if key not in self.table:
            if required:
                raise self.error(key, "missing table")
            return Fields({}, self.source, f"{self.prefix}{key}.", self.error_type)
        return Fields(self.table[key], self.source, f"{self.prefix}{key}.", self.error_type)
