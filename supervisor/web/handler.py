"""One HTTP request of the web view: who is asking, then the route.

Pages are static HTML and JavaScript (``static/``) that read JSON from ``/api/...`` and stay live
through server-sent events (``/api/.../stream``); every value reaches the page as text
(``textContent``), never as markup.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

from supervisor.control.peer import Peer, peer_of
from supervisor.control.protocol import EXIT_CODES, ErrorCode, RequestError
from supervisor.jobs.spec import NAME_PATTERN
from supervisor.observe.usage import parse_period
from supervisor.web import pages
from supervisor.web.auth import COOKIE, same_token

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8",
                ".png": "image/png"}
PAGES = {"/": "overview.html", "/usage": "usage.html"}
ACTIONS = ("stop", "start", "restart")
STREAM_POLL_S = 1.0
STREAM_BEAT_S = 15.0      # a comment line now and then: a closed tab is noticed
LOG_LINES = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login URL carries a token
    "Cache-Control": "no-store",
}
# The Unix socket trusts the connection's peer, so a page from another site that a DNS record
# points at 127.0.0.1 (rebinding) must not be served: only these Host names are answered there.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class WebHandler(BaseHTTPRequestHandler):
    server_version = "yolo-supervisor-web"
    protocol_version = "HTTP/1.0"  # one request per connection: SSE streams end with the connection
    timeout = 30  # seconds a client may take to send its request, or to take what we send it

    # -- plumbing ------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the access log would hold login tokens; failures are logged where they happen

    @property
    def web(self):
        return self.server.web

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str, code: str = "usage") -> None:
        self._json(status, {"error": code, "message": message})

    def _request_error(self, err: RequestError) -> None:
        status = {ErrorCode.PERMISSION: 403, ErrorCode.UNKNOWN_JOB: 404, ErrorCode.WRONG_STATE: 409,
                  ErrorCode.USAGE: 400, ErrorCode.INVALID: 400}.get(err.code, 500)
        self._json(status, {"error": err.code.value, "exit": EXIT_CODES[err.code], "message": str(err)})

    # -- who is asking -----------------------------------------------------------------------
    def _peer(self) -> Optional[Peer]:
        if self.server.unix:
            return peer_of(self.connection)
        session = self.web.logins.session(self._cookie())
        return session.peer if session else None

    def _cookie(self) -> Optional[str]:
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed Cookie header: no session
            return None
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _csrf(self, peer: Peer) -> str:
        if self.server.unix:
            return self.web.logins.socket_csrf(peer.uid)
        session = self.web.logins.session(self._cookie())
        return session.csrf if session else ""

    def _host_allowed(self) -> bool:
        if not self.server.unix:
            return True  # TCP: the session cookie is bound to the host name it was set for
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_HOSTS

    # -- routes ---------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._host_allowed():
            return self._error(421, "this server answers only to localhost on its Unix socket")
        if url.path == "/favicon.ico":
            return self._send(204, b"", "image/png")
        if url.path.startswith("/static/"):
            return self._static(url.path[len("/static/"):])
        if url.path == "/login":
            return self._login((query.get("token") or [""])[0])
        peer = self._peer()
        if peer is None:
            return self._not_logged_in(url.path.startswith("/api/"))
        try:
            self._route_get(url.path, query, peer)
        except RequestError as err:
            self._request_error(err)

    def _route_get(self, path: str, query: dict[str, list[str]], peer: Peer) -> None:
        if path in PAGES:
            return self._static(PAGES[path])
        if re.fullmatch(r"/job/[^/]+", path):
            return self._static("job.html")
        if path == "/api/me":
            return self._json(200, {"user": peer.actor, "uid": peer.uid, "csrf": self._csrf(peer),
                                    "via": "unix socket" if self.server.unix else "session"})
        if path == "/api/overview":
            return self._json(200, pages.without_secrets(self.web.overview(peer)))
        if path == "/api/overview/stream":
            return self._stream(peer, lambda: self._overview_events(peer))
        if path == "/api/usage":
            try:
                since = parse_period((query.get("since") or ["30d"])[0])
            except ValueError as err:
                return self._error(400, str(err))
            return self._json(200, self.web.command(peer, "usage", since_s=since))
        match = re.fullmatch(r"/api/job/([^/]+)(/stream)?", path)
        if match and re.fullmatch(NAME_PATTERN, match.group(1)):
            name = match.group(1)
            if match.group(2):
                return self._stream(peer, lambda: self._job_events(peer, name))
            return self._json(200, self._job_data(peer, name))
        self._error(404, f"no page {path}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not self._host_allowed():
            return self._error(421, "this server answers only to localhost on its Unix socket")
        if url.path == "/logout":
            self.web.logins.end(self._cookie())
            return self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": _cookie_header("", 0)})
        peer = self._peer()
        if peer is None:
            return self._not_logged_in(True)
        match = re.fullmatch(r"/api/job/([^/]+)/(stop|start|restart)", url.path)
        if match is None:
            return self._error(404, f"no action {url.path}")
        # CSRF: the page's own token in a header (another site's page can neither read it nor set
        # a custom header on a cross-site request), and no foreign Origin.
        if not same_token(self.headers.get("X-CSRF-Token"), self._csrf(peer)) or not self._same_origin():
            return self._error(403, "missing or wrong CSRF token: reload the page", "csrf")
        name, action = match.groups()
        try:
            job = self.web.command(peer, action, name=name)  # the CLI's path: its authorization, its dispatch
        except RequestError as err:
            return self._request_error(err)
        self._json(200, pages.without_secrets(job))

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if not origin:
            return True  # browsers send it with every POST of a page; a script without one has no cookie to ride
        return urlsplit(origin).netloc.lower() == (self.headers.get("Host") or "").lower()

    # -- pieces ---------------------------------------------------------------------------------
    def _static(self, name: str) -> None:
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            return self._error(404, f"no file {name}")
        self._send(200, path.read_bytes(), STATIC_TYPES[path.suffix])

    def _login(self, token: str) -> None:
        if self.server.unix:
            return self._send(303, b"", "text/plain", {"Location": "/"})  # the socket knows who you are
        sid = self.web.logins.redeem(token)
        if sid is None:
            return self._send(403, LOGIN_FAILED.encode(), "text/html; charset=utf-8")
        max_age = int(self.web.settings.session_hours * 3600)
        self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": _cookie_header(sid, max_age)})

    def _not_logged_in(self, api: bool) -> None:
        if api:
            return self._error(401, "not logged in: open the URL `yolo-supervisorctl web` prints", "login")
        self._send(401, NOT_LOGGED_IN.encode(), "text/html; charset=utf-8")

    def _job_data(self, peer: Peer, name: str) -> dict[str, Any]:
        history = self.web.command(peer, "history", name=name)
        try:
            results: Any = self.web.command(peer, "results", name=name)
        except RequestError as err:  # e.g. a job whose files are its owner's alone: say so on the page
            results = str(err)
        return pages.job_page(history, results)

    # -- live pages (server-sent events) -----------------------------------------------------------
    def _stream(self, peer: Peer, events) -> None:
        if not self.web.take_stream(peer.uid):
            return self._error(503, "too many live pages open; close some tabs", "busy")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            for header, value in SECURITY_HEADERS.items():
                self.send_header(header, value)
            self.end_headers()
            for kind, data in events():
                line = f"event: {kind}\ndata: {json.dumps(data)}\n\n" if kind else ": beat\n\n"
                self.wfile.write(line.encode())
                self.wfile.flush()
        except (OSError, ValueError):
            pass  # the browser went away
        finally:
            self.web.give_stream(peer.uid)

    def _ticks(self) -> Iterator[bool]:
        """True when a heartbeat is due; ends when the daemon stops."""
        last_beat = time.monotonic()
        while not self.web.closing.is_set() and not self._client_gone():
            beat = time.monotonic() - last_beat >= STREAM_BEAT_S
            if beat:
                last_beat = time.monotonic()
            yield beat
            self.web.closing.wait(STREAM_POLL_S)

    def _client_gone(self) -> bool:
        """The browser closed the connection (its tab): give the stream's slot back now, not at the
        next write."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _overview_events(self, peer: Peer) -> Iterator[tuple[Optional[str], Any]]:
        sent = None
        for beat in self._ticks():
            try:
                data = pages.without_secrets(self.web.overview(peer))
            except RequestError as err:
                data = {"error": str(err)}
            text = json.dumps(data, sort_keys=True)
            if text != sent:
                sent = text
                yield "overview", data
            elif beat:
                yield None, None

    def _job_events(self, peer: Peer, name: str) -> Iterator[tuple[Optional[str], Any]]:
        sent, offset = None, None
        for beat in self._ticks():
            try:
                data = self._job_data(peer, name)
            except RequestError as err:
                yield "failure", {"error": err.code.value, "message": str(err)}
                return
            text = json.dumps(data, sort_keys=True)
            if text != sent:
                sent = text
                yield "job", data
            log, offset = self._log_since(peer, name, offset)
            if log is not None:
                yield "log", log
            elif beat:
                yield None, None

    def _log_since(self, peer: Peer, name: str,
                   offset: Optional[int]) -> tuple[Optional[dict[str, Any]], Optional[int]]:
        """The log's last lines the first time, then what was appended (None: nothing new)."""
        if offset is not None and offset < 0:
            return None, offset  # refused once (not this user's log): not asked again
        try:
            if offset is None:
                tail = self.web.command(peer, "tail", name=name, lines=LOG_LINES)
                return {"text": tail["text"], "reset": True}, tail["offset"]
            chunk = self.web.command(peer, "log", name=name, offset=offset)
        except RequestError as err:
            return ({"error": str(err), "reset": True}, -1) if offset is None else (None, offset)
        if chunk["offset"] == offset and not chunk["restarted"]:
            return None, offset
        return {"text": chunk["text"], "reset": chunk["restarted"]}, chunk["offset"]


def _cookie_header(value: str, max_age: int) -> str:
    # HttpOnly: no script reads it; SameSite=Strict: another site's page never sends it.
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"


NOT_LOGGED_IN = """<!doctype html><meta charset="utf-8"><title>yolo-supervisor: log in</title>
<link rel="stylesheet" href="/static/app.css"><main><h1>Not logged in</h1>
<p>On the server, run <code>yolo-supervisorctl web</code> and open the URL it prints (it logs you in as
the user who ran it), or reach the web socket through <code>ssh -L</code>.</p></main>"""
LOGIN_FAILED = """<!doctype html><meta charset="utf-8"><title>yolo-supervisor: log in</title>
<link rel="stylesheet" href="/static/app.css"><main><h1>This login link is spent or expired</h1>
<p>Login links work once, for two minutes. Run <code>yolo-supervisorctl web</code> again.</p></main>"""
