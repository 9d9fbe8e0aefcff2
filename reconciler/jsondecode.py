"""Decoding the API server's JSON without stalling the event loop.

`json.loads` is C: it holds the GIL from the first byte to the last, so a large body stops every
other task for as long as it takes (a NimbusPolicy near the API server's object-size limit,
31,500 small rules in 1.5 MB: 20-50 ms here; a map of 140,000 keys of the same size: 100-260 ms),
and calling it in a thread changes nothing, since that thread holds the GIL just as long. The
same decoder driven from Python (`json.scanner.py_make_scanner`: objects and arrays built by
Python code, strings still scanned in C) gives the GIL up every switch interval (5 ms), so in a
worker thread it costs 3-5 times the CPU of `json.loads` but the event loop, the watches, the
probes and the Lease renewal go on meanwhile. Nearly every body is small, and decoded at once
with `json.loads`; only one with more values than INLINE_VALUES (estimated from its separators:
a page of 250 KubeArmorPolicies has about 45,000) goes to a thread.

The cyclic garbage collector is held off while such a body is decoded. Building 100,000 objects
that all stay alive until the decode ends would otherwise move them, a few thousand at a time,
into the oldest generation, and each time a quarter more has arrived there a full collection
runs over every object in the process: several of 60-100 ms per body here, each holding the GIL
(in whichever thread allocated last) so the event loop waits. Paused, the objects are looked at
once, by the first collection after the decode (a few ms), and are freed (by reference counting:
a decoded body holds no cycles) once the caller has read what it needs, never having reached
the oldest generation.
"""

from __future__ import annotations

import gc
import json
import json.scanner
import threading
from typing import Any

import anyio.to_thread

INLINE_BYTES = 64 * 1024  # below this, not even counted: at most a few ms
INLINE_VALUES = 64_000  # ~20 ms of json.loads at worst here


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


async def loads(data: str | bytes) -> Any:
    """json.loads(data), in a worker thread when it is large (see above)."""
    if len(data) <= INLINE_BYTES or values(data) <= INLINE_VALUES:
        return json.loads(data)
    text = data.decode() if isinstance(data, bytes) else data
    return await anyio.to_thread.run_sync(decode_in_python, text)
