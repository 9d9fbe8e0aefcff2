"""controller-runtime's bind address flags, parsed without loading the HTTP server (the command
line checks them before it knows whether it will serve)."""

from __future__ import annotations


def parse_bind_address(value: str) -> tuple[str, int] | None:
    """controller-runtime's forms: ":8080" (every interface), "127.0.0.1:8080", "0" (off)."""
    if value in ("0", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bind address {value!r} is not [host]:port or 0")
    return host.strip("[]") or "0.0.0.0", int(port)
