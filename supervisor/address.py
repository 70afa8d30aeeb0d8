"""``host:port`` as config.yaml writes it (metrics_address, web.listen): one parser for both."""

from __future__ import annotations

import ipaddress

METRICS_DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port``; no host means loopback. ValueError if bad."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics_address: {text!r} is not host:port (a port from 1 to 65535)")
    if host and ":" in host:
        ipaddress.IPv6Address(host)  # ValueError for garbage
    return host or METRICS_DEFAULT_HOST, int(port)
