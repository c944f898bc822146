"""A tiny name -> object registry, one per kind of thing (tasks, backbones, ...)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from fpt.core.errors import FPTError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """Register `item` under `name`; usable as a decorator when `item` is omitted."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add(item) if item is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FPTError(f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return [(n, self._items[n]) for n in self.names()]


Factory = Callable[..., T]
