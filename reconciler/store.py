"""The in-memory cache of one resource type: filled by reflectors, read by reconciles.

What a Store holds is what its watches and LISTs delivered plus the answers to this process's
own successful writes (a write's answer is the object as the server had it at that write),
nothing read any other way. Values are the small immutable forms of cached.py, keyed
"namespace/name". One Store may be filled by several reflectors, one per namespace scope.

Everyone who brings news about a key (a watch event, a LIST page, the answer to a write) tells
the store, and the store alone decides, by resourceVersion, whether it is news: no call site
compares versions itself.

resourceVersions are opaque by contract; kube-apiserver on etcd gives etcd's revisions, one
integer sequence for the whole cluster, and this store orders by them. A version that is not an
integer is unordered: the latest news wins (an upsert replaces, a delete of that uid removes,
and a deletion at such a version leaves no tombstone), as before this store ordered anything.
"""

from __future__ import annotations

import enum
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import attrs


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


def order(resource_version: str | None) -> int | None:
    """Where `resource_version` stands in etcd's sequence; None when it is not an integer."""
    try:
        return int(resource_version) if resource_version else None
    except ValueError:
        return None


def _namespace(key: str) -> str:
    return key.partition("/")[0]


@attrs.frozen(slots=True)
class Tombstone:
    """Object `uid` was deleted from its key. `deleted_at`: the deletion's resourceVersion, as a
    watch's DELETED event says it; None when it came from the answer to our own DELETE, which
    does not say it (measured on kube-apiserver v1.35.4: a DELETE of a custom resource without
    finalizers answers 200 with a Status naming only the uid; the watch's DELETED event carries
    the deletion's own resourceVersion, one past the object's last write). `after`: the version
    of the object we deleted; every version of the key up to it came before the deletion."""

    uid: str
    deleted_at: int | None
    after: int | None

    def covers(self, uid: str, version: int | None) -> bool:
        """Whether a version (`uid`, `version`) of the key came before this deletion."""
        if uid == self.uid:
            return True  # a deleted object never comes back: each of its versions is older
        limit = self.deleted_at if self.deleted_at is not None else self.after
        return limit is not None and version is not None and version <= limit


class Store(Generic[V]):
    """The invariant (DESIGN.md, "The cache"): resourceVersion order, whoever brings the news.
    An upsert or a delete older than what the store knows of its key is ignored; a delete
    leaves a tombstone until the watch of the key's scope has passed it; a relist removes every
    key of its scope that its LIST did not name whose stored resourceVersion is not newer than
    the LIST's (answers to our own writes included)."""

    def __init__(self, index: Callable[[V], Iterable[str]] | None = None) -> None:
        self._index_func = index
        # "namespace/name" -> the newest version of the object at that key we have been told
        # of. Never replaced by an older version, nor brought back by news older than its
        # deletion (the tombstone, then the scope's progress, say what is older).
        self._objects: dict[str, V] = {}
        # index value -> keys of the values the index function maps to it; always exactly what
        # _index_func says of the values now in _objects
        self._index: defaultdict[str, set[str]] = defaultdict(set)
        # scope (a namespace; None: every namespace) -> the resourceVersion up to which that
        # scope's watch (or a completed LIST) has delivered everything. It only grows. News
        # about an empty key that is not newer than this is old: whatever it said, the
        # watch has since delivered what came after (perhaps the object's deletion).
        self._progress: dict[str | None, int] = {}
        # key -> the deletion of the object that was there, for an empty key whose deletion
        # the scope's watch has not passed yet: until it has, an older event or a late answer
        # about that object may still come and must not bring it back. A key never has a
        # value and a tombstone at once.
        self._tombstones: dict[str, Tombstone] = {}
        # namespace -> heap of (deleted_at, key) of the tombstones whose deletion's version is
        # known, to drop them as the watch passes them (an entry whose key has since been
        # reused or pruned otherwise is skipped when popped). Tombstones whose version is
        # unknown go when the watch's DELETED event says it, or when a relist does not name
        # their object: so none outlives the watch passing it.
        self._burials: defaultdict[str, list[tuple[int, str]]] = defaultdict(list)

    def get(self, key: str) -> V | None:
        return self._objects.get(key)

    def __len__(self) -> int:
        return len(self._objects)

    def list_keys(self) -> list[str]:
        return list(self._objects)

    def by_index(self, value: str) -> list[V]:
        return [self._objects[key] for key in self._index.get(value, ())]

    def keys_in(self, namespace: str | None) -> set[str]:
        """The keys of the objects of `namespace` (None: all), as stored."""
        if namespace is None:
            return set(self._objects)
        prefix = f"{namespace}/"
        return {key for key in self._objects if key.startswith(prefix)}

    @property
    def tombstones(self) -> int:
        """How many deletions are kept because the watch has not passed them yet."""
        return len(self._tombstones)

    def progress(self, namespace: str) -> int | None:
        """How far the watch covering `namespace` has delivered everything (None: not yet)."""
        mine, everyone = self._progress.get(namespace), self._progress.get(None)
        if mine is None or everyone is None:
            return mine if everyone is None else everyone
        return max(mine, everyone)

    # --- news ------------------------------------------------------------------------------------

    def ignores(self, key: str, uid: str, resource_version: str | None,
                as_of: str | None = None) -> bool:
        """Whether this version of the object at `key` is no news: the store knows the same or
        something newer of that key. `as_of`: the resourceVersion of the LIST that named it
        (a LIST says what was there at its own version); otherwise the object's own."""
        version = order(resource_version)
        stored = self._objects.get(key)
        if stored is not None:
            stored_version = order(stored.resource_version)
            return version is not None and stored_version is not None and version <= stored_version
        tombstone = self._tombstones.get(key)
        if tombstone is not None and tombstone.covers(uid, version):
            return True
        progress = self.progress(_namespace(key))
        news = order(as_of) if as_of is not None else version
        return progress is not None and news is not None and news <= progress

    def upsert(self, value: V, as_of: str | None = None) -> tuple[Change, V | None] | None:
        """News that `value` is the object at its key (at `as_of`: see `ignores`). Stored
        unless the store knows the same or something newer of that key. Returns what changed,
        if anything."""
        key = value.key
        if self.ignores(key, value.uid, value.resource_version, as_of):
            return None
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        else:
            self._tombstones.pop(key, None)  # a newer object at the key: the deletion is past
        self._objects[key] = value
        if self._index_func is not None:
            for index_value in self._index_func(value):
                self._index[index_value].add(key)
        return (Change.ADDED if old is None else Change.UPDATED), old

    def delete(self, key: str, uid: str, resource_version: str | None = None) -> V | None:
        """News that object `uid` was deleted from `key`: at `resource_version` (a watch's
        DELETED event), or at a version not said (None: the answer to our own DELETE, which
        does not say it; the deletion is then newer than the version we hold of `uid`).
        Returns the value removed, if one was."""
        stored = self._objects.get(key)
        said = resource_version is not None
        version = order(resource_version)
        if stored is None:
            tombstone = self._tombstones.get(key)
            if not said or version is None:
                if said and tombstone is not None and tombstone.uid == uid:
                    del self._tombstones[key]  # unordered: the watch's word is the last
            elif tombstone is None or tombstone.uid == uid:
                # the watch says when a deletion happened (one we knew of without its version)
                self._bury(key, Tombstone(uid, version, tombstone.after if tombstone else None))
            elif not tombstone.covers(uid, version):  # a later object's, deleted since
                self._bury(key, Tombstone(uid, version, None))
            return None
        stored_version = order(stored.resource_version)
        if stored.uid == uid:
            if version is not None and stored_version is not None and version <= stored_version:
                return None  # older than what is stored (no real deletion is)
        elif version is None or stored_version is None or version <= stored_version:
            return None  # an earlier object of the name (or unordered): the stored one stays
        # else: a deletion newer than the stored object, which had gone before it
        del self._objects[key]
        self._unindex(key, stored)
        if not said or version is not None:
            self._bury(key, Tombstone(uid, version, stored_version))
        return stored

    def observed(self, scope: str | None, resource_version: str) -> None:
        """The watch of `scope` (a namespace; None: all) has delivered everything up to
        `resource_version` (an event's, a BOOKMARK's or a completed LIST's): tombstones of
        deletions it has passed go."""
        version = order(resource_version)
        if version is None or version <= self._progress.get(scope, -1):
            return
        self._progress[scope] = version
        if not self._burials:
            return
        for namespace in ([scope] if scope is not None else list(self._burials)):
            burials = self._burials.get(namespace)
            if burials is None:
                continue
            while burials and burials[0][0] <= version:
                deleted_at, key = heapq.heappop(burials)
                tombstone = self._tombstones.get(key)
                if tombstone is not None and tombstone.deleted_at == deleted_at:
                    del self._tombstones[key]
                    if not self._tombstones:
                        self._tombstones = {}  # a dict keeps its largest size: let a burst's go
            if not burials:
                del self._burials[namespace]

    def relisted(self, scope: str | None, resource_version: str, named: set[str]) -> list[V]:
        """A LIST of `scope` at `resource_version` has completed, naming the keys in `named`.
        Every key of the scope it did not name goes unless what is stored is newer than the
        LIST (the answer to a write made after it: the watch from the LIST's version brings
        what becomes of it); so do the tombstones of objects it did not name, deleted before
        it. Returns the values removed."""
        list_version = order(resource_version)
        removed = []
        for key in self.keys_in(scope):
            if key in named:
                continue
            stored = self._objects[key]
            stored_version = order(stored.resource_version)
            if list_version is not None and stored_version is not None and \
                    stored_version > list_version:
                continue
            del self._objects[key]
            self._unindex(key, stored)
            removed.append(stored)
        prefix = f"{scope}/" if scope is not None else ""
        for key in [k for k in self._tombstones if k.startswith(prefix) and k not in named]:
            tombstone = self._tombstones[key]
            if tombstone.deleted_at is None and (list_version is None or tombstone.after is None
                                                 or tombstone.after <= list_version):
                del self._tombstones[key]  # the LIST did not name it: deleted before the LIST
        self.observed(scope, resource_version)
        return removed

    # --- inside ----------------------------------------------------------------------------------

    def _bury(self, key: str, tombstone: Tombstone) -> None:
        namespace = _namespace(key)
        if tombstone.deleted_at is not None:
            progress = self.progress(namespace)
            if progress is not None and tombstone.deleted_at <= progress:
                self._tombstones.pop(key, None)  # the watch has passed it already
                return
            heapq.heappush(self._burials[namespace], (tombstone.deleted_at, key))
        self._tombstones[key] = tombstone

    def _unindex(self, key: str, value: V) -> None:
        if self._index_func is not None:
            for index_value in self._index_func(value):
                keys = self._index.get(index_value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._index[index_value]
