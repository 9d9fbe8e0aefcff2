"""The in-memory cache of one resource type, filled by reflectors, read by reconciles."""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]
Transform = Callable[[Obj], Obj]  # what is kept of an object (it must keep its metadata)


class Change(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"


def object_key(obj: Obj) -> str:
    metadata = obj["metadata"]
    return f"{metadata.get('namespace', '')}/{metadata['name']}"


def _resource_version(obj: Obj) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _slim(obj: Obj) -> Obj:
    """managedFields is the largest part of most objects and nothing here reads it."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        obj = {**obj, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    return obj


class Store:
    def __init__(self, index: IndexFunc | None = None, transform: Transform | None = None) -> None:
        self._index_func = index
        self._transform = transform
        # objects by "namespace/name"
        self._objects: dict[str, Obj] = {}
        # index value -> keys of the objects the index function maps to it; always exactly
        # what _index_func says of the objects now in _objects
        self._index: defaultdict[str, set[str]] = defaultdict(set)

    def get(self, key: str) -> Obj | None:
        return self._objects.get(key)

    def __len__(self) -> int:
        return len(self._objects)

    def list_keys(self) -> list[str]:
        return list(self._objects)

    def by_index(self, value: str) -> list[Obj]:
        return [self._objects[key] for key in self._index.get(value, ())]

    def _unindex(self, key: str, obj: Obj) -> None:
        if self._index_func is not None:
            for value in self._index_func(obj):
                keys = self._index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._index[value]

    def _put(self, key: str, obj: Obj) -> None:
        self._objects[key] = obj
        if self._index_func is not None:
            for value in self._index_func(obj):
                self._index[value].add(key)

    def upsert(self, obj: Obj) -> tuple[Change, Obj | None] | None:
        """Store `obj` unless what is stored is the same or a newer version of it (a watch
        event echoing a write this process already stored). Returns what changed, if anything."""
        obj = _slim(obj)
        if self._transform is not None:
            obj = self._transform(obj)
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            old_version, new_version = _resource_version(old), _resource_version(obj)
            same_object = old["metadata"].get("uid") == obj["metadata"].get("uid")
            if same_object and old_version is not None and new_version is not None \
                    and new_version <= old_version:
                return None
            self._unindex(key, old)
        self._put(key, obj)
        return (Change.ADDED if old is None else Change.UPDATED), old

    def delete(self, key: str) -> Obj | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def replace(self, objects: Iterable[Obj], namespace: str | None
                ) -> list[tuple[Change, Obj | None, Obj | None]]:
        """Make the objects of `namespace` (None: all) exactly `objects`, as a fresh LIST
        says; returns the changes as (change, old, new)."""
        changes: list[tuple[Change, Obj | None, Obj | None]] = []
        seen = set()
        for obj in objects:
            seen.add(object_key(obj))
            result = self.upsert(obj)
            if result is not None:
                change, old = result
                changes.append((change, old, self._objects[object_key(obj)]))
        prefix = f"{namespace}/" if namespace is not None else ""
        for key in [k for k in self._objects if k.startswith(prefix) and k not in seen]:
            changes.append((Change.DELETED, self.delete(key), None))
        return changes
