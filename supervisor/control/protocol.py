"""The control protocol, shared by the daemon's server and the CLI.

Newline-delimited JSON over a Unix stream socket: the client sends one request
per line and reads one response per line; a connection may carry several
(``tail -f`` keeps one open). A message is at most ``MAX_MESSAGE_BYTES``; a
longer line is an error, never buffered whole.

    request:  {"v": 1, "cmd": "stop", "args": {"name": "coco"}}
    response: {"ok": true, "data": ...}
              {"ok": false, "error": "wrong_state", "message": "coco: is stopped"}

Requests are bounded (one message); answers are not: one that does not fit a message (``status``
of 10,000 jobs) comes in parts, each a message, which the receiving side joins:

    {"ok": true, "part": [...some items...], "more": true}
    {"ok": true, "part": [...the rest...], "more": false}

A list answer is cut between its items; an object answer between the items of its lists (the
other values come in the first part). An item that alone would not fit one message is replaced by
``{"name": ..., "error": "over the message limit"}``, so no single item can make an answer fail.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

VERSION = 1
MAX_MESSAGE_BYTES = 1024 * 1024
# Log text per response: JSON escaping can grow it up to 6x, still under the message limit.
LOG_CHUNK_BYTES = 128 * 1024


class ErrorCode(str, Enum):
    """Why a request failed; each maps to one CLI exit status."""

    USAGE = "usage"              # bad request or bad arguments
    INVALID = "invalid"          # the job file is not a valid spec
    NOT_RUNNING = "not_running"  # no daemon on the socket (client side only)
    UNKNOWN_JOB = "unknown_job"
    WRONG_STATE = "wrong_state"
    PERMISSION = "permission"
    INTERNAL = "internal"        # the daemon failed or did not answer in time


EXIT_OK = 0

#: The one exit-status table: error code, the CLI's exit status, what it means. ``EXIT_CODES``
#: and the CLI's ``--help`` text are derived from it; README's "Exit status" paragraph matches it.
EXIT_STATUSES: tuple[tuple[ErrorCode, int, str], ...] = (
    (ErrorCode.INTERNAL, 1, "internal error"),
    (ErrorCode.USAGE, 2, "usage error"),
    (ErrorCode.INVALID, 2, "invalid job file"),
    (ErrorCode.NOT_RUNNING, 3, "the daemon is not running (no socket, or nobody listening)"),
    (ErrorCode.UNKNOWN_JOB, 4, "unknown job"),
    (ErrorCode.WRONG_STATE, 5, "the job is in the wrong state for the command"),
    (ErrorCode.PERMISSION, 6, "permission denied"),
)

EXIT_CODES: dict[ErrorCode, int] = {code: status for code, status, _ in EXIT_STATUSES}


def exit_status_text(quote: str = "") -> str:
    """``0 ok, 1 internal error, 2 usage error or invalid job file, ...``: the table as one sentence
    for ``--help`` (and, with ``quote="`"``, for README)."""
    meanings: dict[int, list[str]] = {EXIT_OK: ["ok"]}
    for _code, status, meaning in EXIT_STATUSES:
        meanings.setdefault(status, []).append(meaning)
    return ", ".join(f"{quote}{status}{quote} {' or '.join(words)}" for status, words in sorted(meanings.items()))


class ProtocolError(Exception):
    """A malformed, oversized or truncated message."""


class RequestError(Exception):
    """A request that failed with a code the client understands; ``str()`` is for the user."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)


@dataclass(frozen=True)
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "cmd": self.cmd, "args": self.args}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "Request":
        if msg.get("v") != VERSION:
            raise RequestError(ErrorCode.USAGE, f"protocol version {msg.get('v')!r} not supported (want {VERSION})")
        cmd, args = msg.get("cmd"), msg.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            raise RequestError(ErrorCode.USAGE, "a request needs a string 'cmd' and an object 'args'")
        return cls(cmd, args)


@dataclass(frozen=True)
class Response:
    ok: bool
    data: Any = None
    error: Optional[ErrorCode] = None
    message: str = ""

    @classmethod
    def success(cls, data: Any) -> "Response":
        return cls(True, data)

    @classmethod
    def failure(cls, code: ErrorCode, message: str) -> "Response":
        return cls(False, error=code, message=message)

    def to_wire(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "data": self.data}
        return {"ok": False, "error": self.error.value, "message": self.message}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "Response":
        if msg.get("ok") is True:
            return cls.success(msg.get("data"))
        try:
            code = ErrorCode(msg.get("error"))
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls.failure(code, str(msg.get("message", "")))

    def unwrap(self) -> Any:
        """The data, or the error raised as ``RequestError``."""
        if not self.ok:
            raise RequestError(self.error, self.message)
        return self.data


# Room in one message for a part's own keys and the JSON around its items.
_PART_OVERHEAD = 4096


def response_frames(resp: "Response") -> list[bytes]:
    """The messages that carry ``resp``: one when it fits, else its parts (see the module's text)."""
    if resp.ok and isinstance(resp.data, list):
        return _list_frames(resp.data, MAX_MESSAGE_BYTES - _PART_OVERHEAD)
    try:
        return [encode(resp.to_wire())]
    except ProtocolError:
        if not resp.ok or not isinstance(resp.data, dict):
            raise
    parts: list[Any] = _parts(resp.data, MAX_MESSAGE_BYTES - _PART_OVERHEAD)
    return [encode({"ok": True, "part": part, "more": i < len(parts) - 1}) for i, part in enumerate(parts)]


def _parts(data: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """An object answer cut into parts of at most ``budget`` bytes, between the items of its lists."""
    head = {k: ([] if isinstance(v, list) else v) for k, v in data.items()}  # every list key, empty
    room = budget - _size(head)
    if room < 0:
        raise ProtocolError("an answer's own values are over the message limit")
    parts = [head]
    for key, items in data.items():
        for item in items if isinstance(items, list) else ():
            item, size = _fitted(item, budget)
            if size > room:
                parts.append({})
                room = budget - _size({key: []})
            parts[-1].setdefault(key, []).append(item)
            room -= size
    return parts


def _list_frames(items: list, budget: int) -> list[bytes]:
    """A list answer's messages, each item encoded once (10,000 jobs' views are 6 MB of JSON)."""
    encoded = [_dumps(item) for item in items]
    encoded = [e if len(e) < budget // 2 else _dumps(_too_large(item)) for e, item in zip(encoded, items)]
    if sum(len(e) + 1 for e in encoded) <= budget:
        return [b'{"ok":true,"data":[' + b",".join(encoded) + b"]}\n"]
    chunks: list[list[bytes]] = [[]]
    room = budget
    for e in encoded:
        if len(e) + 1 > room:
            chunks.append([])
            room = budget
        chunks[-1].append(e)
        room -= len(e) + 1
    last = len(chunks) - 1
    return [b'{"ok":true,"part":[' + b",".join(c) + b'],"more":' + (b"true" if i < last else b"false") + b"}\n"
            for i, c in enumerate(chunks)]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _fitted(item: Any, budget: int) -> tuple[Any, int]:
    """The item (or its stand-in when it alone is over the budget) and its size in a list."""
    size = _size(item) + 1
    if size > budget // 2:
        item = _too_large(item)
        size = _size(item) + 1
    return item, size


def _size(value: Any) -> int:
    return len(_dumps(value))


def _too_large(item: Any) -> dict[str, Any]:
    name = item.get("name") if isinstance(item, dict) else None
    return {"name": name if isinstance(name, str) and len(name) < 256 else None, "error": "over the message limit"}


def join_parts(parts: list[Any]) -> Any:
    """The answer ``response_frames`` cut into ``parts``."""
    if all(isinstance(p, list) for p in parts):
        return [item for part in parts for item in part]
    joined: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list) and isinstance(joined.get(key), list):
                joined[key].extend(value)
            else:
                joined[key] = value
    return joined


def encode(msg: dict[str, Any]) -> bytes:
    line = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    return line


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """Text that came from outside (a file name, an exception, a user name) as one printable
    line: a newline in a dropped file's name must not forge lines of ``history``."""
    return str(text).translate(_CONTROL)


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON; Python accepts them, and a NaN timeout turns a check off.
    raise ValueError(f"{name} is not a JSON number")


def decode(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line, parse_constant=_no_constants)
    except RecursionError:
        raise ProtocolError("not JSON the daemon accepts: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return msg


class Connection:
    """One end of a control connection: send and receive whole messages."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._reader = sock.makefile("rb")
        self._pending = bytearray()  # receive_by's bytes after the last whole message

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))

    def send_response(self, resp: "Response") -> None:
        """One message, or the parts of an answer too large for one (joined by ``request``)."""
        for frame in response_frames(resp):
            self.sock.sendall(frame)

    def receive(self) -> Optional[dict[str, Any]]:
        """The next message; None when the peer closed the connection between messages."""
        line = self._reader.readline(MAX_MESSAGE_BYTES + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            if len(line) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"message over the {MAX_MESSAGE_BYTES} byte limit")
            raise ProtocolError("connection closed in the middle of a message")
        return decode(line)

    def receive_by(self, deadline: float) -> Optional[dict[str, Any]]:
        """The next message, which must be complete by ``deadline`` (monotonic); ``TimeoutError``
        otherwise. A per-read timeout is not enough: one byte every so often never trips it.
        (The daemon's side; do not mix with ``receive`` on one connection.)"""
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"message over the {MAX_MESSAGE_BYTES} byte limit")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no whole request in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._pending:
                    raise ProtocolError("connection closed in the middle of a message")
                return None
            self._pending += chunk
        line, _, rest = bytes(self._pending).partition(b"\n")
        self._pending = bytearray(rest)
        if len(line) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message over the {MAX_MESSAGE_BYTES} byte limit")
        return decode(line)

    def request(self, req: Request) -> Response:
        """Send one request and wait for its response."""
        self.send(req.to_wire())
        msg = self._answer()
        if "part" not in msg:
            return Response.from_wire(msg)
        parts = [msg["part"]]
        while msg.get("more") is True:
            msg = self._answer()
            if "part" not in msg:  # the daemon failed part-way: its error
                return Response.from_wire(msg)
            parts.append(msg["part"])
        if not all(isinstance(p, list) for p in parts) and not all(isinstance(p, dict) for p in parts):
            raise ProtocolError("an answer in parts of different kinds")
        return Response.success(join_parts(parts))

    def _answer(self) -> dict[str, Any]:
        msg = self.receive()
        if msg is None:
            raise ProtocolError("the daemon closed the connection without answering")
        return msg

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(path: Path, timeout: Optional[float] = 60.0) -> Connection:
    """Connect to the daemon's socket; ``RequestError(NOT_RUNNING | PERMISSION)`` when that fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise RequestError(ErrorCode.NOT_RUNNING, f"the daemon is not running (no one listens on {path})") from None
    except PermissionError:
        sock.close()
        raise RequestError(ErrorCode.PERMISSION, f"permission denied: cannot connect to {path} "
                                                 "(ask to be added to the daemon's socket group)") from None
    except OSError as err:
        sock.close()
        raise RequestError(ErrorCode.NOT_RUNNING, f"cannot connect to {path}: {err.strerror}") from None
    return Connection(sock)
