"""Notification targets for tests, real and on loopback: an HTTP server that records what
apprise's ``json://`` plugin posts, and a socket that accepts connections and never answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import wait_for

SECRET = "hook-s3cr3t-7f3a9"  # the part of the URL that must never be shown


class Receiver:
    """``json://127.0.0.1:PORT/PATH`` target; ``messages`` are the posted JSON bodies, in order.

    ``fail_first`` answers that many posts with HTTP 500 (to exercise retries).
    """

    def __init__(self, fail_first: int = 0):
        self.messages: list[dict] = []
        self.paths: list[str] = []
        self.failures_left = fail_first
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.posts += 1
                    failing = receiver.failures_left > 0
                    if failing:
                        receiver.failures_left -= 1
                    else:
                        receiver.messages.append(json.loads(body))
                        receiver.paths.append(self.path)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = SECRET) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.messages)

    def wait(self, predicate, timeout: float = 60, what: str = "a notification") -> list[dict]:
        """Until ``predicate(messages)`` holds; the messages then."""
        return wait_for(lambda: (msgs := self.received()) and predicate(msgs) and msgs, timeout, what=what)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """A target that accepts every connection, reads nothing, answers nothing, closes nothing."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted_at: list[float] = []  # wall time of each connection
        self._held: list[socket.socket] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/{SECRET}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted_at.append(time.time())
            self._held.append(conn)

    def close(self) -> None:
        self._closing = True
        self.sock.close()
        for conn in self._held:
            conn.close()
