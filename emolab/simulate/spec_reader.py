"""The spec's error and its typed reader: every value is read through ``Reader``, which names the dotted field at
fault (``conditions.alphas[1]``) in the ``SpecError`` it raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emolab.core.errors import EmolabError

__all__ = ["Reader", "SpecError"]


class SpecError(EmolabError, ValueError):
    """A spec that cannot run; ``field`` is the dotted path of the field at fault."""

    def __init__(self, message: str, field: str | None = None, path: str | Path | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f"{field}: " if field else ""
        super().__init__(f"{where}{at}{message}")
        self.field = field
        self.message = message


class Reader:
    """Typed access to one mapping of the spec, with the dotted path of every field for errors."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"must be a mapping, got {type(data).__name__}", where or None)
        self.data, self.where, self.used = data, where, set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types: type | tuple[type, ...], default: Any = ..., *, check=None, why: str = "") -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise SpecError("is required", self.path(key))
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise SpecError(f"must be {_names(types)}, got a boolean", self.path(key))
        if not isinstance(value, types):
            raise SpecError(f"must be {_names(types)}, got {type(value).__name__}", self.path(key))
        if check is not None and not check(value):
            raise SpecError(why or f"invalid value {value!r}", self.path(key))
        return value

    def strings(self, key: str, default: Any = ..., *, min_len: int = 1) -> list[str]:
        values = self.get(key, list, default)
        if values is default and default is not ...:
            return values
        if len(values) < min_len:
            raise SpecError(f"needs at least {min_len} item(s)", self.path(key))
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                raise SpecError("must be a non-empty string", f"{self.path(key)}[{i}]")
        return list(values)

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise SpecError(f"unknown field (known: {', '.join(sorted(self.used))})", self.path(str(extra[0])))


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    words = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(dict.fromkeys(words.get(t, t.__name__) for t in types))
