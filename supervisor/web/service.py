"""The web view's servers: HTTP on TCP (loopback by default) and on a Unix socket, in threads.

Nothing here runs on the daemon's loop. Every read and every action is a control request
answered by ``ControlServer.answer`` with the web user's ``Peer``: the same authorization and
the same dispatch as ``yolo-supervisorctl`` (a request that waits on the loop waits in this
server's thread, never the other way round).

Who the user is:
- TCP: the session cookie bought with a login token from ``yolo-supervisorctl web`` (the token
  holds the uid the control socket saw);
- Unix socket: the connection's peer (SO_PEERCRED), so ``ssh -L 8787:.../web.sock host`` serves
  the SSH login user. The socket has the control socket's mode and group.
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from supervisor.control.peer import Peer
from supervisor.control.protocol import Request
from supervisor.web.auth import TOKEN_TTL_S, Logins
from supervisor.web.handler import WebHandler
from supervisor.web.settings import WebSettings

if TYPE_CHECKING:
    from supervisor.control.server import ControlServer
    from supervisor.daemon.core import Daemon

SOCKET_NAME = "web.sock"
OVERVIEW_MAX_AGE_S = 1.0   # one status+gpus per second however many browsers watch
# ... and never more than a fifth of the loop's time: a snapshot that took T waits 4T before the next.
OVERVIEW_LOOP_SHARE = 0.2
MAX_STREAMS = 64           # live pages open at once (each holds a thread)
MAX_STREAMS_PER_UID = 8


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    unix = False

    def __init__(self, address: tuple[str, int], web: "WebService"):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        super().__init__(address, WebHandler)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    unix = True

    def __init__(self, sock: socket.socket, web: "WebService"):
        self.web = web
        super().__init__(str(sock.getsockname()), WebHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # bound and listening already, with its mode and group set


class WebService:
    """The web view's servers, its logins and the overview snapshot they share."""

    def __init__(self, daemon: "Daemon", control: "ControlServer", settings: WebSettings, control_socket: Path):
        self.daemon = daemon
        self.control = control
        self.settings = settings
        self.socket_path = Path(settings.socket) if settings.socket else Path(control_socket).parent / SOCKET_NAME
        self.logins = Logins(settings.session_hours * 3600)
        self.closing = threading.Event()
        self._servers: list[Any] = []
        self._inode: Optional[int] = None
        self._snapshot: tuple[float, Optional[dict[str, Any]]] = (0.0, None)
        self._snapshot_lock = threading.Lock()
        self._streams: dict[int, int] = {}
        self._streams_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Bind both servers (OSError: the port is taken) and serve each in its own thread."""
        if self.settings.listen:
            from supervisor.address import parse_address

            self._servers.append(_TcpServer(parse_address(self.settings.listen), self))
        self._servers.append(_UnixServer(self._bind_unix(), self))
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                             name="web-server", daemon=True).start()
        self.daemon.log.info("web view listening", url=self.base_url(), socket=str(self.socket_path))

    def _bind_unix(self) -> socket.socket:
        """Like the control socket: mode and group set before it appears under its name."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise RuntimeError(f"{self.socket_path} exists and is not a socket; not replacing it")
        except FileNotFoundError:
            pass
        tmp = self.socket_path.with_name(f".{self.socket_path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(tmp))
        control = os.stat(self.control.path)
        os.chmod(tmp, stat.S_IMODE(control.st_mode))
        os.chown(tmp, -1, control.st_gid)
        sock.listen(16)
        os.replace(tmp, self.socket_path)
        self._inode = os.stat(self.socket_path).st_ino
        return sock

    def follow_control_socket(self) -> None:
        """A reload changed ``socket_group``: the web socket takes the control socket's group again."""
        try:
            os.chown(self.socket_path, -1, os.stat(self.control.path).st_gid)
        except OSError as err:
            self.daemon.log.warning("web socket group not changed", path=str(self.socket_path), error=str(err))

    def stop(self) -> None:
        self.closing.set()  # live streams end at their next beat
        for server in self._servers:
            server.shutdown()
            server.server_close()
        try:
            if self._inode is not None and os.stat(self.socket_path).st_ino == self._inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    # -- logins -----------------------------------------------------------------------
    def base_url(self) -> Optional[str]:
        tcp = next((s for s in self._servers if not s.unix), None)
        if tcp is None:
            return None
        host, port = tcp.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def login_info(self, peer: Peer) -> dict[str, Any]:
        """What ``yolo-supervisorctl web`` prints: the URL with a one-use token for this peer."""
        token = self.logins.issue(peer)
        path = f"/login?token={token}"
        base = self.base_url()
        return {"url": base + path if base else None, "path": path, "socket": str(self.socket_path),
                "expires_s": TOKEN_TTL_S, "user": peer.actor}

    # -- the command path ---------------------------------------------------------------
    def command(self, peer: Peer, cmd: str, **args: Any) -> Any:
        """One control request as ``peer``; ``RequestError`` as the CLI would get it."""
        return self.control.answer(Request(cmd, args).to_wire(), peer).unwrap()

    def overview(self, peer: Peer) -> dict[str, Any]:
        """``status`` and ``gpus`` (readable by anyone who can connect), at most once a second."""
        with self._snapshot_lock:
            fresh_until, snapshot = self._snapshot
            if snapshot is None or time.monotonic() >= fresh_until:
                start = time.monotonic()
                snapshot = {"jobs": self.command(peer, "status"), "gpus": self.command(peer, "gpus")}
                took = time.monotonic() - start
                self._snapshot = (time.monotonic() + max(OVERVIEW_MAX_AGE_S, took / OVERVIEW_LOOP_SHARE - took),
                                  snapshot)
            return snapshot

    def take_stream(self, uid: int) -> bool:
        with self._streams_lock:
            if sum(self._streams.values()) >= MAX_STREAMS or self._streams.get(uid, 0) >= MAX_STREAMS_PER_UID:
                return False
            self._streams[uid] = self._streams.get(uid, 0) + 1
            return True

    def give_stream(self, uid: int) -> None:
        with self._streams_lock:
            self._streams[uid] -= 1
            if not self._streams[uid]:
                del self._streams[uid]

