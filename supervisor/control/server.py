"""The control socket: a thread that accepts CLI connections and answers requests.

Who may do what is decided from the kernel's word about the peer
(SO_PEERCRED, SO_PEERGROUPS), never from anything the client says:
- anyone who can connect may read the queue (status, history, events);
- root, the daemon's own user and members of ``socket_group`` may submit;
- a job is acted on (stop, start, edit, remove, tail, ...) only by its owner
  and the admins: checked per job in ``handlers.dispatch`` (supervisor/control/authz.py).
The socket is 0660 and owned by ``socket_group``, so by default only those
users can connect at all; loosen it (an ACL, a wider mode) to give others
read access.

Handlers run on the daemon's loop thread; this module only moves messages.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from supervisor.control import handlers
from supervisor.paths import make_dir
from supervisor.control.peer import Peer, group_id, may_mutate, peer_of
from supervisor.control.protocol import Connection, ErrorCode, ProtocolError, Request, RequestError, Response
from supervisor.store import StoreError

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon

SOCKET_MODE = 0o660
# Connection slots. Anyone who can connect may read, so a reader must not be able to hold
# every slot: each read-only user gets a few and all of them together a bounded pool;
# root, the daemon's user and the socket group have slots of their own (never taken by
# others, bounded per user only against a runaway script).
MAX_PER_READER = 4
MAX_READERS_TOTAL = 32
MAX_PER_OPERATOR = 64
# Each request must arrive whole within this long after the previous answer (or the
# connection): a client that sends one byte now and then gets no more than this.
REQUEST_DEADLINE_S = 30.0


def resolve_group(group: Optional[str]) -> Optional[int]:
    """A group name or number -> gid; ValueError for an unknown group."""
    try:
        return group_id(group)
    except KeyError:
        raise ValueError(f"socket_group: no group named '{str(group).strip()}'") from None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class ControlServer:
    """Listens on the control socket; one short-lived thread per connection."""

    def __init__(self, daemon: "Daemon", path: Path, group: Optional[str] = None):
        self.daemon = daemon
        self.path = Path(path)
        self.gid = resolve_group(group)
        self._sock: Optional[socket.socket] = None
        self._inode: Optional[int] = None
        self._slots = _Slots()
        self._closing = False
        self._thread: Optional[threading.Thread] = None

    # -- socket life cycle -----------------------------------------------------
    def start(self) -> None:
        """Bind (refusing if another daemon answers on the path) and start accepting."""
        make_dir(self.path.parent, 0o755)  # users reach the socket through it (the daemon's umask is 0077)
        self._refuse_if_in_use()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(tmp))
        # Mode and group are set before the socket appears under its name: no window.
        os.chmod(tmp, SOCKET_MODE)
        if self.gid is not None:
            os.chown(tmp, -1, self.gid)
        sock.listen(16)
        os.replace(tmp, self.path)
        self._sock, self._inode = sock, os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._accept_loop, name="control-server", daemon=True)
        self._thread.start()
        self.daemon.log.info("control socket listening", path=str(self.path), group=self.gid,
                             mode=oct(SOCKET_MODE))

    def _refuse_if_in_use(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            return  # a stale socket from a daemon that died: replaced on bind
        finally:
            probe.close()
        raise RuntimeError(f"another daemon is listening on {self.path}")

    def set_group(self, group: Optional[str]) -> None:
        """Apply a new ``socket_group`` (SIGHUP reload): socket ownership and the mutate check."""
        gid = resolve_group(group)
        if gid is not None:
            os.chown(self.path, -1, gid)
        self.gid = gid

    def close(self) -> None:
        """Stop accepting and remove the socket, unless a newer daemon already replaced it."""
        self._closing = True
        if self._sock is None:
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the server thread
        except OSError:
            pass
        self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        if self._thread is not None:
            self._thread.join(5)

    # -- connections -----------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closing:
                    return
                continue
            try:
                peer = peer_of(conn)
            except OSError:
                conn.close()
                continue
            operator = may_mutate(peer, os.geteuid(), self.gid)
            refusal = self._slots.take(peer.uid, operator)
            if refusal:
                self._refuse(conn, refusal)
                continue
            threading.Thread(target=self._serve, args=(conn, peer, operator), name="control-conn",
                             daemon=True).start()

    def _refuse(self, conn: socket.socket, message: str) -> None:
        try:
            Connection(conn).send(Response.failure(ErrorCode.INTERNAL, message).to_wire())
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket, peer: Peer, operator: bool) -> None:
        try:
            channel = Connection(conn)
            while not self._closing:
                try:
                    msg = channel.receive_by(time.monotonic() + REQUEST_DEADLINE_S)
                except ProtocolError as err:
                    channel.send(Response.failure(ErrorCode.USAGE, str(err)).to_wire())
                    return
                if msg is None:
                    return
                conn.settimeout(REQUEST_DEADLINE_S)  # a client that does not read its answer is cut off too
                self._send(channel, self.answer(msg, peer))
        except OSError:
            pass  # the client went away, or missed its deadline
        finally:
            conn.close()
            self._slots.give_back(peer.uid, operator)

    def _send(self, channel: Connection, resp: Response) -> None:
        """The answer, in parts when it is large; one that cannot be cut is an error, never a dead connection."""
        try:
            channel.send_response(resp)
        except ProtocolError as err:
            channel.send(Response.failure(ErrorCode.INTERNAL, f"the answer could not be sent: {err}").to_wire())

    def answer(self, msg: dict, peer: Peer) -> Response:
        """One request -> one response; never raises."""
        try:
            req = Request.from_wire(msg)
            self._authorize(req, peer)
            return Response.success(handlers.dispatch(self.daemon, req, peer))
        except RequestError as err:
            return Response.failure(err.code, str(err))
        except StoreError as err:  # a full disk under the state database: say so, keep serving
            self.daemon.log.error("control request failed", cmd=msg.get("cmd"), error=str(err))
            return Response.failure(ErrorCode.INTERNAL, f"{err} (the daemon keeps serving; free space and retry)")
        except Exception as exc:  # a bug in a handler must not kill the connection thread silently
            self.daemon.log.error("control request failed", cmd=msg.get("cmd"), error=repr(exc))
            return Response.failure(ErrorCode.INTERNAL, f"internal error: {exc!r}")

    def _authorize(self, req: Request, peer: Peer) -> None:
        handler = handlers.HANDLERS.get(req.cmd)
        if handler is None or not handler.mutates:
            return
        if not may_mutate(peer, os.geteuid(), self.gid):
            self.daemon.log.warning("control request refused", cmd=req.cmd, actor=peer.actor,
                                    job=req.args.get("name"))
            group = f"group {group_name(self.gid)}" if self.gid is not None else "no socket_group is configured"
            raise RequestError(ErrorCode.PERMISSION,
                               f"permission denied: {req.cmd} needs root, the daemon's user or a member of "
                               f"the socket group ({group}); {peer.actor} may only read")


class _Slots:
    """Connection slots per user: readers share a bounded pool, operators have their own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_uid: dict[int, int] = {}
        self._readers = 0

    def take(self, uid: int, operator: bool) -> Optional[str]:
        """None when a slot was taken; else why not (sent to the client before closing)."""
        with self._lock:
            held = self._per_uid.get(uid, 0)
            if operator:
                if held >= MAX_PER_OPERATOR:
                    return f"too many control connections from uid {uid} ({held}); close some and try again"
            elif held >= MAX_PER_READER:
                return f"too many control connections from uid {uid} ({held}); close some and try again"
            elif self._readers >= MAX_READERS_TOTAL:
                return "too many read-only control connections; try again"
            else:
                self._readers += 1
            self._per_uid[uid] = held + 1
            return None

    def give_back(self, uid: int, operator: bool) -> None:
        with self._lock:
            left = self._per_uid.get(uid, 1) - 1
            if left:
                self._per_uid[uid] = left
            else:
                self._per_uid.pop(uid, None)
            if not operator:
                self._readers -= 1
