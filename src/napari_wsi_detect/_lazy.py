"""Lazy attribute tables for package `__init__` modules.

Importing a package must stay cheap (no torch, Qt or napari until a name is used), so
each package lists its public names with the module that defines them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def attach(
    package: str, table: dict[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], list[str]]:
    """`(__getattr__, __all__)` for `package`, resolving `name` from `table[name]`;
    a name in `submodules` resolves to the subpackage `package.name` itself.

    A package `__init__` must not bind a subpackage's name itself: with
    `from __future__ import annotations` in it, `from package import annotations` used
    to return `__future__.annotations` instead of the `annotations` subpackage.
    """
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(table)
