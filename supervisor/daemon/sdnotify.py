"""A tiny sd_notify: tell systemd we are ready, what we are doing, and that the loop is alive.

Datagrams to $NOTIFY_SOCKET (a path, or ``@name`` in the abstract namespace).
Without $NOTIFY_SOCKET (not under systemd) every call is a no-op. The
watchdog ping is sent from the daemon's housekeeping step, not a thread of its
own, so a hung loop stops pinging and systemd restarts the daemon (which
re-adopts the training it left running).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ, clock=time.monotonic):
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._clock = clock
        self._last_ping: Optional[float] = None
        self._last_status: Optional[str] = None

    @classmethod
    def from_environ(cls) -> "Notifier":
        """Read $NOTIFY_SOCKET and $WATCHDOG_* and remove them, so training children do not inherit them."""
        notifier = cls(dict(os.environ))
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=..., only when it changed."""
        if text == self._last_status:
            return False
        self._last_status = text
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def watchdog(self) -> bool:
        """WATCHDOG=1 at most every half of $WATCHDOG_USEC; False when not due or not asked for."""
        if self.watchdog_interval is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval / 2:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")


def _address(value: str) -> Optional[str]:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    return value if value.startswith("/") else None


def _watchdog_interval(env: Mapping[str, str]) -> Optional[float]:
    """Seconds from $WATCHDOG_USEC, if meant for this process ($WATCHDOG_PID, when set, is us)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
