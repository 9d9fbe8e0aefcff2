"""Newcomers: how long a NimbusPolicy created moments ago waits for the core's first status."""

from __future__ import annotations

from reconciler.clock import FakeClock
from reconciler.newcomers import Newcomers


def test_a_newcomer_waits_out_the_window_from_its_creation_and_is_then_dropped() -> None:
    clock = FakeClock()
    newcomers = Newcomers(clock, window=1.0)
    assert newcomers.wait("ns/np") == 0.0  # never seen created: there before we started
    newcomers.created("ns/np")
    assert newcomers.wait("ns/np") == 1.0
    clock.advance(0.25)
    assert newcomers.wait("ns/np") == 0.75
    clock.advance(0.75)
    assert newcomers.wait("ns/np") == 0.0
    assert len(newcomers) == 0  # nothing kept once it holds nothing back


def test_made_again_it_waits_again_and_deleted_it_is_forgotten() -> None:
    clock = FakeClock()
    newcomers = Newcomers(clock, window=1.0)
    newcomers.created("ns/a")
    clock.advance(0.5)
    newcomers.created("ns/b")
    newcomers.created("ns/a")  # made again (its deletion missed): a newcomer again
    clock.advance(0.75)
    # a's first creation no longer counts, and b (older than a's second) is still there
    assert (newcomers.wait("ns/a"), newcomers.wait("ns/b")) == (0.25, 0.25)
    newcomers.forget("ns/a")
    assert newcomers.wait("ns/a") == 0.0 and len(newcomers) == 1


def test_what_no_longer_waits_is_dropped_at_any_creation() -> None:
    clock = FakeClock()
    newcomers = Newcomers(clock, window=1.0)
    for i in range(100):
        newcomers.created(f"ns/np-{i}")
    clock.advance(1.0)
    newcomers.created("ns/last")
    assert len(newcomers) == 1


def test_a_window_of_zero_never_waits() -> None:
    newcomers = Newcomers(FakeClock(), window=0.0)
    newcomers.created("ns/np")
    assert newcomers.wait("ns/np") == 0.0 and len(newcomers) == 0
