"""NimbusPolicies seen created moments ago, whose first status is the Nimbus core's to write.

The core makes a NimbusPolicy and then, at once, writes its status (`status: Created`,
`lastUpdated`). Every adapter acts on the same creation, and lists its policies in that status.
Our status patch is tested against what it changes (see `diff.status_patch`), and with no
status yet the only thing it can test is that there is none: the core's first write refuses
it whenever it lands between our read and our write, which is most of the time next to a core
(our policies take a few milliseconds to write; the core's status, about a tenth of a second).
So a NimbusPolicy that has no status and was created moments ago gets its status from us only
once the core has written one (its appearance on the watch brings a reconcile), or `window`
after its creation if no core does. Our policies are not held back: only the status write.
"""

from __future__ import annotations

from collections import OrderedDict

from .clock import Clock


class Newcomers:
    def __init__(self, clock: Clock, window: float) -> None:
        self._clock, self.window = clock, window
        # key -> when its creation came on the watch, oldest first (creations come in order);
        # a key is dropped at the next look (created or wait) once `window` old, when it no
        # longer holds a write back, or at its deletion: so it holds no more than the
        # creations of the last `window` seconds, and what came before the last look.
        self._seen: OrderedDict[str, float] = OrderedDict()

    def created(self, key: str) -> None:
        """The watch brought the creation of the key's object (not an initial LIST: what was
        there before we started is no newcomer)."""
        now = self._clock.now()
        self._drop_expired(now)
        self._seen.pop(key, None)
        self._seen[key] = now

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def wait(self, key: str) -> float:
        """Seconds left for the key's object to get its first status from its maker."""
        now = self._clock.now()
        self._drop_expired(now)
        seen = self._seen.get(key)
        return 0.0 if seen is None else seen + self.window - now

    def __len__(self) -> int:
        return len(self._seen)

    def _drop_expired(self, now: float) -> None:
        while self._seen:
            key, seen = next(iter(self._seen.items()))
            if now - seen < self.window:
                return
            del self._seen[key]
