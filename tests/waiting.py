"""Waiting on a condition with a deadline, never on a fixed sleep (async; the control plane
launcher's `wait_for` is the synchronous twin)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(condition: Callable[[], T | Awaitable[T]], timeout: float = 15.0,
                     what: str = "the condition", interval: float = 0.05) -> T:
    """Call `condition` (plain or async) until it returns something truthy, and return that;
    fail naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        last: Any = await result if inspect.isawaitable(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
