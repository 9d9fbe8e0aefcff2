"""The store's invariant, one ordering at a time: resourceVersion order whoever brings the news
(a watch event, a LIST page, the answer to our own write); a deletion kept as a tombstone until
the watch of its scope has passed it; a relist drops what its LIST did not name unless it is
newer than the LIST. (test_store_orderings.py runs every ordering against a model server.)"""

from __future__ import annotations

import tracemalloc

import attrs

from reconciler.store import Change, Store


@attrs.frozen
class Obj:
    namespace: str
    name: str
    uid: str
    resource_version: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def obj(uid: str, version: int | str, name: str = "p", namespace: str = "ns") -> Obj:
    return Obj(namespace, name, uid, str(version))


def held(store: Store[Obj], key: str = "ns/p") -> tuple[str, str] | None:
    value = store.get(key)
    return None if value is None else (value.uid, value.resource_version)


def test_an_older_version_never_replaces_a_newer_one_whoever_brings_it() -> None:
    store: Store[Obj] = Store()
    assert store.upsert(obj("u", 10)) == (Change.ADDED, None)
    assert store.upsert(obj("u", 9)) is None  # a late answer to an earlier write
    assert store.upsert(obj("u", 10)) is None  # the watch echoing our write
    assert store.upsert(obj("u", 11)) == (Change.UPDATED, obj("u", 10))
    # an earlier object of the same name (deleted, then this one created) is older too
    assert store.upsert(obj("earlier", 8)) is None
    assert held(store) == ("u", "11")


def test_a_deletion_older_than_what_is_stored_is_ignored() -> None:
    store: Store[Obj] = Store()
    store.upsert(obj("new", 20))  # our create's answer, ahead of the watch
    assert store.delete("ns/p", "old", "15") is None  # the watch: the earlier object's deletion
    assert held(store) == ("new", "20")
    assert store.delete("ns/p", "new", "21") == obj("new", 20)
    assert held(store) is None


def test_our_delete_keeps_an_older_event_from_bringing_the_object_back() -> None:
    """Issue 17, defect 2: our DELETE's answer (a Status: no resourceVersion) empties the key;
    a MODIFIED event made before the deletion is still on its way."""
    store: Store[Obj] = Store()
    store.upsert(obj("u", 5))
    store.observed("ns", "5")
    assert store.delete("ns/p", "u") == obj("u", 5)
    assert store.upsert(obj("u", 6)) is None  # someone's change, before our deletion
    assert held(store) is None and store.tombstones == 1
    assert store.delete("ns/p", "u", "7") is None  # the watch's DELETED: nothing left to report
    store.observed("ns", "7")
    assert store.tombstones == 0  # the watch has passed the deletion
    assert store.upsert(obj("u", 6)) is None  # a late answer to a write before it: still old
    assert store.upsert(obj("successor", 8)) == (Change.ADDED, None)


def test_a_tombstone_gives_way_to_a_newer_object_of_the_name() -> None:
    store: Store[Obj] = Store()
    store.upsert(obj("u", 5))
    store.delete("ns/p", "u")
    assert store.upsert(obj("earlier", 4)) is None  # older than the version we deleted
    assert store.upsert(obj("successor", 9)) == (Change.ADDED, None)  # our create's answer
    assert store.tombstones == 0
    assert store.upsert(obj("u", 6)) is None  # the deleted one's last change: older still


def test_a_late_answer_never_brings_back_what_the_watch_has_deleted() -> None:
    store: Store[Obj] = Store()
    store.upsert(obj("u", 5))
    assert store.delete("ns/p", "u", "7") == obj("u", 5)  # the watch got there first
    store.observed("ns", "7")
    assert store.tombstones == 0
    assert store.upsert(obj("u", 6)) is None  # the answer to our patch, made before
    assert held(store) is None


def test_an_answer_newer_than_the_watch_is_kept() -> None:
    store: Store[Obj] = Store()
    store.observed("ns", "10")
    assert store.upsert(obj("u", 11)) == (Change.ADDED, None)
    assert store.upsert(obj("v", 9, name="q")) is None  # the watch has passed 9: q is gone


def test_a_relist_drops_what_its_list_did_not_name_unless_it_is_newer() -> None:
    """Issue 17, defect 1: our create's answer (101) stored while the relist waits for its
    LIST; someone deletes the policy (102); the LIST, served at 102, does not name it."""
    store: Store[Obj] = Store()
    store.upsert(obj("kept", 90, name="named"))
    store.observed("ns", "100")
    store.upsert(obj("u", 101))  # our create's answer, during the relist
    store.upsert(obj("w", 103, name="later"))  # our create's answer, after the LIST
    removed = store.relisted("ns", "102", {"ns/named"})
    assert removed == [obj("u", 101)]
    assert held(store) is None
    assert held(store, "ns/later") == ("w", "103")  # newer than the LIST: the watch says more
    assert held(store, "ns/named") == ("kept", "90")
    assert store.progress("ns") == 102


def test_a_list_names_what_it_saw_at_its_own_version() -> None:
    store: Store[Obj] = Store()
    store.observed("ns", "100")
    # unchanged since long before the watch's position, but there at the LIST's version
    assert store.upsert(obj("u", 50), as_of="120") == (Change.ADDED, None)
    # a LIST served before our DELETE, read after its answer: the object stays deleted
    store.delete("ns/p", "u")
    assert store.upsert(obj("u", 50), as_of="110") is None
    assert store.relisted("ns", "110", {"ns/p"}) == [] and store.tombstones == 1
    # a relist that does not name it any more: deleted before it, the tombstone goes
    assert store.relisted("ns", "130", set()) == [] and store.tombstones == 0


def test_a_relist_keeps_the_tombstone_of_an_object_created_after_its_list() -> None:
    store: Store[Obj] = Store()
    store.observed("ns", "100")
    store.upsert(obj("u", 105))  # our create, answered after the LIST was served at 102
    store.delete("ns/p", "u")  # and our delete of it
    assert store.relisted("ns", "102", set()) == []
    assert store.upsert(obj("u", 105)) is None  # the watch from 102 brings its ADDED: old
    assert store.delete("ns/p", "u", "106") is None
    store.observed("ns", "106")
    assert store.tombstones == 0


def test_each_scope_passes_its_own_deletions() -> None:
    """One store, one reflector per namespace: etcd's versions are one sequence, but the watch
    of namespace a having got to 50 says nothing about namespace b."""
    store: Store[Obj] = Store()
    store.upsert(obj("u", 10, namespace="a"))
    store.upsert(obj("v", 10, namespace="b"))
    store.delete("a/p", "u", "20")
    store.delete("b/p", "v", "21")
    store.observed("a", "50")
    assert store.tombstones == 1
    assert store.upsert(obj("v", 15, namespace="b")) is None  # b's watch is behind: still old
    store.observed("b", "30")
    assert store.tombstones == 0


def test_a_watch_of_every_namespace_passes_deletions_in_all() -> None:
    store: Store[Obj] = Store()
    for namespace in ("a", "b"):
        store.upsert(obj("u", 10, namespace=namespace))
        store.delete(f"{namespace}/p", "u", "20")
    store.observed(None, "20")
    assert store.tombstones == 0
    assert store.progress("a") == 20


def test_versions_that_are_not_integers_are_unordered_and_the_latest_news_wins() -> None:
    store: Store[Obj] = Store()
    store.upsert(obj("u", "b"))
    assert store.upsert(obj("u", "a")) is not None
    assert held(store) == ("u", "a")
    assert store.delete("ns/p", "other", "z") is None  # another object: the uid decides
    assert store.delete("ns/p", "u", "z") == obj("u", "a")
    assert store.tombstones == 0  # nothing to order it by: no tombstone
    assert store.upsert(obj("v", "c", name="q")) is not None
    assert store.relisted("ns", "x", set()) == [obj("v", "c", name="q")]


def test_tombstones_do_not_outlive_the_watch() -> None:
    """2,000 policies deleted by us: one tombstone each until the watch's DELETED events come
    (pruned as the watch passes them), then none, and the memory they took is given back."""
    store: Store[Obj] = Store()
    for i in range(2000):
        store.upsert(obj(f"u{i}", 1000 + i, name=f"p{i}"))
    store.observed("ns", "2999")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        store.delete(f"ns/p{i}", f"u{i}")  # our DELETEs' answers
    assert store.tombstones == 2000
    for i in range(2000):  # the watch catches up, one DELETED event at a time
        version = str(3000 + i)
        store.delete(f"ns/p{i}", f"u{i}", version)
        store.observed("ns", version)
    assert store.tombstones == 0 and not store._burials
    left = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"after 2,000 deletions and their events: 0 tombstones, {left} bytes left")
    assert left < 2000 * 5  # the deleted values are freed, and what held the tombstones
