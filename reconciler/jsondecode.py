"""Decoding the API server's JSON without stalling the event loop.

`json.loads` is C: it holds the GIL from the first byte to the last, so a large body stops every
other task for as long as it takes (a NimbusPolicy near the API server's object-size limit,
31,500 small rules in 1.5 MB: 20-50 ms here; a map of 140,000 keys of the same size: 100-260 ms),
and calling it in a thread changes nothing, since that thread holds the GIL just as long. The
same decoder driven from Python (`json.scanner.py_make_scanner`: objects and arrays built by
Python code, strings still scanned in C) gives the GIL up every switch interval (5 ms), so in a
worker thread it costs 3-5 times the CPU of `json.loads` but the event loop, the watches, the
probes and the Lease renewal go on meanwhile. Nearly every body is small, and decoded at once
with `json.loads`; only one over COUNTED_BYTES, or with more values than INLINE_VALUES (estimated
from its separators: a page of 250 KubeArmorPolicies has about 45,000), goes to a thread.

One such decode runs at a time (per event loop); the others wait their turn, not in threads of
their own. The decodes take the GIL in turns whatever their number, so this costs no time, but
each thread that wants the GIL makes the loop wait longer for it: with 4 decoding at once the
loop went 190-320 ms without a wake-up here, with 16 at once 1.7-1.9 s and with 40 (anyio's
thread limit) 5.4 s, against 40 ms and 110-180 ms one at a time (load 6-7 on 2 cores). Four
workers' status answers at once, or the watches of many namespaces each bringing a large
NimbusPolicy, would otherwise hold the Lease renewal up.

The cyclic garbage collector is held off while such a body is decoded. Building 100,000 objects
that all stay alive until the decode ends would otherwise move them, a few thousand at a time,
into the oldest generation, and each time a quarter more has arrived there a full collection
runs over every object in the process: several of 60-100 ms per body here, each holding the GIL
(in whichever thread allocated last) so the event loop waits. Paused, the objects are looked at
once, by the first collection after the decode (a few ms), and are freed (by reference counting:
a decoded body holds no cycles) once the caller has read what it needs, never having reached
the oldest generation.

A large LIST answer (a page holding NimbusPolicies at the size limit; the one request of an
expired continue token) is not decoded whole: its items are decoded as the reader reaches them,
in batches of about BATCH_CHARS of JSON, so no more than a batch of full objects (and its text)
is held at a time. Eight NimbusPolicies of 1.5 MB in one page are 135 MB of objects at once.
"""

from __future__ import annotations

import codecs
import gc
import json
import json.decoder
import json.scanner
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio.lowlevel
import anyio.to_thread

INLINE_BYTES = 64 * 1024  # below this, not even counted: at most a few ms
INLINE_VALUES = 64_000  # ~20 ms of json.loads at worst here
COUNTED_BYTES = 1024 * 1024  # above this, large without counting (5 ms a pass at 8 MB)
TEXT_CHUNK = 1024 * 1024  # bytes made text at a time, each a short hold of the GIL
BATCH_CHARS = 64 * 1024  # of a large LIST answer's items, decoded at a time


# The one decode at a time of an event loop (see above).
_decoder: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("decoder")


async def in_decoder_thread(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args) in a worker thread, when no other large decode of this event loop runs
    (waiting for its turn meanwhile)."""
    try:
        limiter = _decoder.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _decoder.set(limiter)
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


def values(data: str | bytes) -> int:
    """About how many values `data` holds: its ':' and ',' (some may be inside strings)."""
    if isinstance(data, bytes):
        return data.count(b":") + data.count(b",")
    return data.count(":") + data.count(",")


class _PythonDecoder(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__()
        # not in typeshed, but part of the json package since Python 2.6
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]


class _CollectorPause:
    """Holds cyclic garbage collection off while at least one decode is under way (several may
    run in as many threads), if it was on when the first began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Decodes under way that hold collection off; while above 0, it is off. `_resume`: it
        # was on when the count left 0, so it is turned on again when the count returns to 0.
        self._decoding = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._decoding == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._decoding += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._decoding -= 1
            if self._decoding == 0 and self._resume:
                gc.enable()


_collector_pause = _CollectorPause()


def decode_in_python(text: str) -> Any:
    """json.loads(text), by Python code: it lets other threads run while it works."""
    with _collector_pause:
        return _PythonDecoder().decode(text)


def _large(data: str | bytes) -> bool:
    return len(data) > COUNTED_BYTES or (len(data) > INLINE_BYTES
                                         and values(data) > INLINE_VALUES)


def _text(data: str | bytes) -> str:
    """`data` (UTF-8, as the API server sends JSON) as text, a chunk at a time."""
    if isinstance(data, str):
        return data
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    parts = [decoder.decode(view[start:start + TEXT_CHUNK])
             for start in range(0, len(data), TEXT_CHUNK)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


async def loads(data: str | bytes) -> Any:
    """json.loads(data), in a worker thread when it is large (see above)."""
    if not _large(data):
        return json.loads(data)
    return await in_decoder_thread(lambda: decode_in_python(_text(data)))


# --- LIST answers --------------------------------------------------------------------------------

Decode = Callable[[str, int], tuple[Any, int]]  # JSONDecoder.raw_decode: (value, where it ends)
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's
# the json package's string scanner (C): (the string, the index after its closing quote)
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]


def _expect(text: str, index: int, char: str) -> int:
    """The index after `char`, which must be at `index`."""
    if text[index:index + 1] != char:
        raise json.JSONDecodeError(f"Expecting {char!r}", text, index)
    return _skip(text, index + 1)


def _members(text: str, index: int, into: dict[str, Any], decode: Decode, stop: str | None
             ) -> tuple[int, bool]:
    """Decode an object's members from `index` into `into` until the end of the object, or
    until the key `stop`, whose value is left undecoded. Returns (where the value or the end is,
    whether `stop` was reached)."""
    while text[index:index + 1] == '"':
        key, index = _scanstring(text, index + 1)
        index = _expect(text, _skip(text, index), ":")
        if key == stop:
            return index, True
        into[key], index = decode(text, index)
        index = _skip(text, index)
        if text[index:index + 1] != ",":
            break
        index = _skip(text, index + 1)
    return _expect(text, index, "}"), False


END = object()  # what _elements yields after the last element


def _elements(text: str, index: int, decode: Decode) -> Iterator[tuple[Any, int]]:
    """The elements of the array at `index`, one at a time, with where each ends; then
    (END, the index after the array)."""
    index = _expect(text, index, "[")
    if text[index:index + 1] == "]":
        yield END, index + 1
        return
    while True:
        element, index = decode(text, index)
        yield element, index
        index = _skip(text, index)
        if text[index:index + 1] == "]":
            yield END, index + 1
            return
        index = _expect(text, index, ",")


class ListItems:
    """The items of a large LIST answer, decoded as they are reached: `async for` in batches
    by a worker thread (see above); `for`, one at a time with json's C decoder."""

    def __init__(self, text: str, start: int, page: dict[str, Any]) -> None:
        self._text = text
        self._start = start  # where the items array begins
        self._page = page  # gets the members after the items, if any, once they are read

    def __bool__(self) -> bool:
        return True  # like the list it stands for, as far as `page.get("items") or []` goes

    def _finish(self, index: int) -> None:
        """Read what follows the items: more members of the page (none, from an API server),
        the page's end, and nothing after it."""
        text = self._text
        index = _skip(text, index)
        if text[index:index + 1] == ",":
            index, _ = _members(text, _skip(text, index + 1), self._page,
                                json.JSONDecoder().raw_decode, stop=None)
        else:
            index = _expect(text, index, "}")
        if index != len(text):
            raise json.JSONDecodeError("Extra data", text, index)

    def __iter__(self) -> Iterator[Any]:
        for element, end in _elements(self._text, self._start, json.JSONDecoder().raw_decode):
            if element is END:
                self._finish(end)
                return
            yield element

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[Any]:
        elements = _elements(self._text, self._start, _PythonDecoder().raw_decode)
        begin, done = self._start, False
        while not done:
            batch, begin, done = await in_decoder_thread(_batch, elements, begin)
            batch.reverse()
            while batch:
                yield batch.pop()  # let go of as soon as the reader asks for the next
        self._finish(begin)


def _batch(elements: Iterator[tuple[Any, int]], begin: int) -> tuple[list[Any], int, bool]:
    """The next elements, about BATCH_CHARS of their JSON; where they end; whether that was the
    last of them."""
    batch: list[Any] = []
    with _collector_pause:
        for element, end in elements:
            if element is END:
                return batch, end, True
            batch.append(element)
            if end - begin >= BATCH_CHARS:
                return batch, end, False
    raise AssertionError("the elements end with END")


async def loads_list(data: bytes) -> dict[str, Any]:
    """A LIST answer; a large one with its items as ListItems, decoded as they are reached.
    Only an answer shaped as the API server writes it (its metadata before its items) is read
    that way; any other is decoded whole."""
    if not _large(data):
        return json.loads(data)  # type: ignore[no-any-return]
    text = await in_decoder_thread(_text, data)
    page: dict[str, Any] = {}
    try:
        start, found = _members(text, _expect(text, _skip(text, 0), "{"), page,
                                json.JSONDecoder().raw_decode, stop="items")
    except (json.JSONDecodeError, IndexError):
        found = False
    if not found or "metadata" not in page or text[start:start + 1] != "[":
        return await loads(text)  # type: ignore[no-any-return]
    page["items"] = ListItems(text, start, page)
    return page
