"""Named choices: each one entry that holds its name, its help text and its implementation.

As timm's ``register_model`` keeps a model's name and builder together and derives
``list_models()``, a :class:`Registry` is the one list of an option's choices: the scripts'
argparse ``choices`` and help, the config checks and the code that runs a choice all read it.
Adding a choice is one ``register`` call beside the others of its kind.

An entry names its implementation by dotted path (``"deepfake_detector.networks:build_seed_cnn"``)
and imports it on first use (:meth:`Entry.load`): the registries live in
:mod:`deepfake_detector.recipes`, which imports no TensorFlow, so ``--help`` and the checks of a
config read names and help texts without loading the libraries that implement them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One choice: its name, a line of help for ``--help``, and where its implementation is."""

    name: str
    help: str
    implementation: str | None = None  # "package.module:attribute", imported by load(); None: nothing to run

    def load(self) -> Any:
        """The implementation, its module imported now if it was not yet.

        Raises:
            LookupError: the entry has no implementation.
        """
        if self.implementation is None:
            raise LookupError(f"{self.name} has no implementation")
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)


E = TypeVar("E", bound=Entry)


class Registry(Mapping[str, E], Generic[E]):
    """The choices of one kind (``architecture``, ``optimizer``...), by name, in registration order.

    A read-only mapping of name to entry, so ``argparse``'s ``choices``, ``name in registry`` and
    ``", ".join(registry)`` work on it as on a dict.
    """

    def __init__(self, kind: str, entry_type: type[E] = Entry):
        self.kind = kind  # in error messages: "unknown {kind} ..."
        self.entry_type = entry_type
        self._entries: dict[str, E] = {}

    def register(self, name: str, *, help: str, implementation: str | None = None, **fields) -> E:
        """Add a choice; ``fields`` are those of the registry's entry type beyond name, help and implementation."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = self.entry_type(name=name, help=help, implementation=implementation, **fields)
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Every choice's name, in registration order (timm's ``list_models``)."""
        return tuple(self._entries)

    def check(self, name: str, error: type[Exception] = ValueError) -> E:
        """The entry called ``name``.

        Raises:
            error: no such choice; the message lists those there are.
        """
        if name not in self._entries:
            raise error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def load(self, name: str, error: type[Exception] = ValueError) -> Any:
        """The implementation of the choice called ``name`` (:meth:`check`, then :meth:`Entry.load`)."""
        return self.check(name, error).load()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
