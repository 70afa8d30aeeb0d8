"""Who is at the browser: one-use login tokens, session cookies and CSRF tokens.

``yolo-supervisorctl web`` asks the daemon over the control socket for a login token; the token
holds the ``Peer`` the kernel reported for that connection (SO_PEERCRED), so the browser that
redeems it acts as that user, no more. A token is good once and for ``TOKEN_TTL_S``; the session
cookie it buys lasts ``session_hours``. Each session has its own CSRF token, which the page sends
back in a header with every action (a header another site's page cannot set without our CORS
consent, which we never give).

On the Unix socket there is no login: every connection's peer is the kernel's word (``ssh -L``
connects as the SSH login user). Its CSRF token is derived from the uid with a key that lives
as long as the daemon, so it needs no state.

No I/O and no clock of its own: ``now`` comes from the caller (tests pass their own).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from supervisor.control.peer import Peer

TOKEN_TTL_S = 120.0
MAX_PENDING_TOKENS = 256   # a script asking for tokens in a loop cannot grow memory without end
MAX_SESSIONS = 4096
COOKIE = "yolo_session"


@dataclass(frozen=True)
class Session:
    peer: Peer
    csrf: str
    expires_at: float


class Logins:
    """Login tokens waiting to be redeemed and the sessions they became."""

    def __init__(self, session_s: float, clock: Callable[[], float] = time.time):
        self.session_s = session_s
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Peer, float]] = {}
        self._sessions: dict[str, Session] = {}
        self._key = secrets.token_bytes(32)

    def issue(self, peer: Peer) -> str:
        """A one-use token for ``peer``, good for ``TOKEN_TTL_S``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._drop_expired()
            if len(self._tokens) >= MAX_PENDING_TOKENS:
                self._tokens.pop(min(self._tokens, key=lambda t: self._tokens[t][1]))
            self._tokens[token] = (peer, self.clock() + TOKEN_TTL_S)
        return token

    def redeem(self, token: str) -> Optional[str]:
        """The session id the token buys (the token is spent), or None for an unknown/expired token."""
        with self._lock:
            self._drop_expired()
            held = self._tokens.pop(token, None)
            if held is None:
                return None
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(min(self._sessions, key=lambda s: self._sessions[s].expires_at))
            sid = secrets.token_urlsafe(32)
            self._sessions[sid] = Session(held[0], secrets.token_urlsafe(24), self.clock() + self.session_s)
            return sid

    def session(self, sid: Optional[str]) -> Optional[Session]:
        if not sid:
            return None
        with self._lock:
            found = self._sessions.get(sid)
            if found is None or found.expires_at <= self.clock():
                self._sessions.pop(sid, None)
                return None
            return found

    def end(self, sid: Optional[str]) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def socket_csrf(self, uid: int) -> str:
        """The CSRF token of a Unix-socket user (no session there)."""
        return hmac.new(self._key, f"uid:{uid}".encode(), hashlib.sha256).hexdigest()[:32]

    def _drop_expired(self) -> None:
        now = self.clock()
        for token in [t for t, (_, until) in self._tokens.items() if until <= now]:
            del self._tokens[token]
        for sid in [s for s, sess in self._sessions.items() if sess.expires_at <= now]:
            del self._sessions[sid]


def same_token(given: Optional[str], expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
