"""A TLS listener for aiohttp that holds at most so many connections at once.

asyncio's TLS protocol keeps a 256 KB read buffer per connection from the moment it is accepted:
a TLS connection costs the server about 300 KB before its first byte, and an idle one is held
for the handshake timeout. Anyone who reaches the metrics port could open 600 of them (180 MB,
an OOM kill under the Deployment's memory limit) without a token, without even a ClientHello.
So connections are accepted as plain TCP, and only those within the limit are then turned into
TLS (`loop.start_tls`) and handed to aiohttp's handler; one more is closed as soon as it is
accepted, before any TLS state is made for it. Scrapes beyond the limit are refused while it
holds (Prometheus retries at its next interval); the controller is not harmed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ConnectionSlots:
    """How many connections the listener holds, at most `limit`. Every accepted connection
    within the limit holds one slot from acceptance until it is closed, whatever closes it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0  # connections closed at once for want of a slot
        # the handshakes under way, cancelled when the listener stops
        self.upgrades: set[asyncio.Task[None]] = set()

    def take(self) -> bool:
        if self.held >= self.limit:
            self.refused += 1
            return False
        self.held += 1
        return True

    def give_back(self) -> None:
        self.held -= 1


class _Slot:
    """One connection's slot: given back once, whichever of the paths that close it comes first
    (refused handshake, the client gone before it, the TLS connection closed)."""

    def __init__(self, slots: ConnectionSlots) -> None:
        self._slots = slots
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back()


class _Handed(asyncio.Protocol):
    """Between the TLS transport and aiohttp's handler: gives the slot back when the connection
    is lost (the TLS protocol reports that even for a handshake that never completed, to a
    handler that never saw connection_made: that one is not told)."""

    def __init__(self, handler: asyncio.Protocol, slot: _Slot) -> None:
        self._handler = handler
        self._slot = slot
        self._connected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connected = True
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._slot.release()
        if self._connected:
            self._handler.connection_lost(exc)


class _Accepted(asyncio.Protocol):
    """A connection as accepted: plain TCP until it has a slot and its handshake is done."""

    def __init__(self, slots: ConnectionSlots, handler: Callable[[], asyncio.Protocol],
                 context: ssl.SSLContext, handshake_timeout: float) -> None:
        self._slots = slots
        self._handler = handler
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._slot: _Slot | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._slots.take():
            transport.abort()
            return
        self._slot = _Slot(self._slots)
        transport.pause_reading()  # the ClientHello waits in the socket for the TLS protocol
        upgrade = asyncio.ensure_future(self._upgrade(transport, self._slot))
        self._slots.upgrades.add(upgrade)
        upgrade.add_done_callback(self._slots.upgrades.discard)

    async def _upgrade(self, transport: asyncio.Transport, slot: _Slot) -> None:
        handed = _Handed(self._handler(), slot)
        try:
            secure = await asyncio.get_running_loop().start_tls(
                transport, handed, self._context, server_side=True,
                ssl_handshake_timeout=self._handshake_timeout)
        except BaseException as error:
            transport.abort()
            slot.release()
            if not isinstance(error, Exception):
                raise  # cancelled: the listener is stopping
            log.debug("metrics TLS handshake failed", extra={"error": repr(error)})
            return
        if secure is None:  # the connection closed meanwhile
            slot.release()
            return
        handed.connection_made(secure)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only while still plain TCP (afterwards the TLS protocol has the transport)."""
        if self._slot is not None:
            self._slot.release()


async def serve_tls(handler: Callable[[], Any], host: str, port: int, context: ssl.SSLContext,
                    slots: ConnectionSlots, handshake_timeout: float) -> asyncio.Server:
    """Listen on host:port; each connection within `slots` is served by a new `handler()`
    (aiohttp's web.Server: one RequestHandler per connection) over TLS with `context`."""
    return await asyncio.get_running_loop().create_server(
        lambda: _Accepted(slots, handler, context, handshake_timeout), host or None, port,
        reuse_address=True)


async def stop(server: asyncio.Server, slots: ConnectionSlots) -> None:
    """Stop accepting and abandon the handshakes under way (the connections served are aiohttp's
    to close)."""
    server.close()
    for upgrade in list(slots.upgrades):
        upgrade.cancel()
    await asyncio.gather(*slots.upgrades, return_exceptions=True)
    await server.wait_closed()
