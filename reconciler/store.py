"""The in-memory cache of one resource type: filled by reflectors, read by reconciles.

What a Store holds is what its watch delivered plus the answers to this process's own
successful writes (a write's answer is the object as the server now has it, a version the
watch will deliver too), nothing read any other way. Values are the small immutable forms of
cached.py, keyed "namespace/name".
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar


class Change(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"


class Cached(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def uid(self) -> str: ...

    @property
    def resource_version(self) -> str: ...


V = TypeVar("V", bound=Cached)


def _version(value: Cached) -> int | None:
    try:
        return int(value.resource_version)
    except ValueError:
        return None


def is_newer(old: Cached, new: Cached) -> bool:
    """Whether `new` should replace `old`: another object of the name, or a later version of
    the same one (a watch event echoing a write this process already stored is not)."""
    if old.uid != new.uid:
        return True
    old_version, new_version = _version(old), _version(new)
    return old_version is None or new_version is None or new_version > old_version


class Store(Generic[V]):
    def __init__(self, index: Callable[[V], Iterable[str]] | None = None) -> None:
        self._index_func = index
        # values by "namespace/name"
        self._objects: dict[str, V] = {}
        # index value -> keys of the values the index function maps to it; always exactly what
        # _index_func says of the values now in _objects
        self._index: defaultdict[str, set[str]] = defaultdict(set)

    def get(self, key: str) -> V | None:
        return self._objects.get(key)

    def __len__(self) -> int:
        return len(self._objects)

    def list_keys(self) -> list[str]:
        return list(self._objects)

    def by_index(self, value: str) -> list[V]:
        return [self._objects[key] for key in self._index.get(value, ())]

    def _unindex(self, key: str, value: V) -> None:
        if self._index_func is not None:
            for index_value in self._index_func(value):
                keys = self._index.get(index_value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._index[index_value]

    def upsert(self, value: V) -> tuple[Change, V | None] | None:
        """Store `value` unless what is stored is the same or a newer version of it. Returns
        what changed, if anything."""
        key = value.key
        old = self._objects.get(key)
        if old is not None:
            if not is_newer(old, value):
                return None
            self._unindex(key, old)
        self._objects[key] = value
        if self._index_func is not None:
            for index_value in self._index_func(value):
                self._index[index_value].add(key)
        return (Change.ADDED if old is None else Change.UPDATED), old

    def delete(self, key: str, uid: str | None = None) -> V | None:
        """Remove `key` (only if it is still the object `uid`, when given: a late DELETED
        event of an object's earlier incarnation leaves its successor alone)."""
        old = self._objects.get(key)
        if old is None or (uid is not None and old.uid != uid):
            return None
        del self._objects[key]
        self._unindex(key, old)
        return old

    def keys_in(self, namespace: str | None) -> set[str]:
        """The keys of the objects of `namespace` (None: all), as stored."""
        if namespace is None:
            return set(self._objects)
        prefix = f"{namespace}/"
        return {key for key in self._objects if key.startswith(prefix)}
