"""A small HTTP client for the web view's tests: TCP with a cookie jar of one, or the Unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_config(home: Path, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(f"web:\n  listen: 127.0.0.1:{port}\n")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Web:
    """Requests to one web view; keeps the session cookie the login set."""

    def __init__(self, base: Optional[str] = None, unix: Optional[Path] = None, timeout: float = 30.0):
        self.base, self.unix, self.timeout = base, unix, timeout
        self.cookie: Optional[str] = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix is not None:
            return _UnixConnection(str(self.unix), self.timeout)
        netloc = urlsplit(self.base).netloc
        return http.client.HTTPConnection(netloc, timeout=self.timeout)

    def request(self, method: str, path: str, headers: Optional[dict[str, str]] = None) -> http.client.HTTPResponse:
        conn = self._connection()
        sent = dict(headers or {})
        if self.cookie:
            sent.setdefault("Cookie", self.cookie)
        conn.request(method, path, headers=sent)
        return conn.getresponse()

    def login(self, url: str) -> http.client.HTTPResponse:
        split = urlsplit(url)
        resp = self.request("GET", f"{split.path}?{split.query}")
        cookie = resp.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return resp

    def json(self, method: str, path: str, headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
        resp = self.request(method, path, headers)
        return resp.status, json.loads(resp.read() or b"null")
