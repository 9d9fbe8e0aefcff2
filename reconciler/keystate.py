"""What the controller remembers about each NimbusPolicy between reconciles, with one owner.

Only the reconcile of a key reads or writes that key's state: the work queue never hands a key
to two workers at once, so there is no race to guard against. Event handlers never touch it.
The reconcile that finds its NimbusPolicy gone calls `forget(key)`, which removes every trace
of the key; a reconcile that is still running when the DELETED event arrives cannot write the
state back afterwards, because the forgetting reconcile only runs once it is done.
"""

from __future__ import annotations

import attrs

from .plan import Desired, DriftStreak

Version = tuple[str, int]  # (uid, generation) of a NimbusPolicy


@attrs.define
class KeyState:
    # The policies required by the (uid, generation) they were built from: a resync or an
    # event about the policies reuses them rather than building and rendering them again.
    desired: tuple[Version, Desired] | None = None
    # The (uid, generation) last converged: drift after it is someone changing our policies.
    converged: Version | None = None
    drift: DriftStreak = attrs.Factory(DriftStreak)
    # Events and log lines already made for the problems of `reported_version`, by Event name.
    reported_version: Version | None = None
    reported: set[str] = attrs.Factory(set)
    # The uid of the NimbusPolicy whose namespace refused our writes as being deleted.
    namespace_terminating: str | None = None


class KeyStates:
    def __init__(self) -> None:
        self._states: dict[str, KeyState] = {}
        # "namespace/name" of a KubeArmorPolicy someone else holds -> the NimbusPolicy keys that
        # need its name: when that object changes or goes away, they are looked at again.
        # Always exactly the inverse of _claims, which is what set_claims was last told per key.
        self._claimants: dict[str, set[str]] = {}
        self._claims: dict[str, frozenset[str]] = {}

    def get(self, key: str) -> KeyState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = KeyState()
        return state

    def set_claims(self, key: str, claims: frozenset[str]) -> None:
        previous = self._claims.pop(key, frozenset())
        for name in previous - claims:
            keys = self._claimants[name]
            keys.discard(key)
            if not keys:
                del self._claimants[name]
        for name in claims - previous:
            self._claimants.setdefault(name, set()).add(key)
        if claims:
            self._claims[key] = claims

    def claimants(self, policy_key: str) -> frozenset[str]:
        return frozenset(self._claimants.get(policy_key, ()))

    def forget(self, key: str) -> None:
        self._states.pop(key, None)
        self.set_claims(key, frozenset())

    def sizes(self) -> dict[str, int]:
        """How many entries each map holds (tests check nothing outlives its NimbusPolicy)."""
        return {"states": len(self._states), "claims": len(self._claims),
                "claimants": len(self._claimants)}
