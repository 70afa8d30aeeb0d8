"""The control protocol: framing, size limit, error codes, over a real socket pair."""

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from supervisor.control import cli
from supervisor.control.protocol import (EXIT_CODES, EXIT_OK, EXIT_STATUSES, MAX_MESSAGE_BYTES, Connection, ErrorCode,
                                         ProtocolError, Request, RequestError, Response, connect, decode, encode,
                                         exit_status_text)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ca, cb = Connection(a), Connection(b)
    yield ca, cb
    ca.close()
    cb.close()


def test_messages_are_one_json_object_per_line(pair):
    client, server = pair
    client.send(Request("stop", {"name": "coco"}).to_wire())
    client.send(Request("status").to_wire())
    first, second = server.receive(), server.receive()
    assert Request.from_wire(first) == Request("stop", {"name": "coco"})
    assert Request.from_wire(second) == Request("status", {})
    assert encode({"a": "é"}).count(b"\n") == 1 and encode({"a": "x\ny"}).endswith(b"}\n")


def test_request_and_response_round_trip(pair):
    client, server = pair
    server.send(Response.failure(ErrorCode.WRONG_STATE, "coco: is stopped").to_wire())
    got = Response.from_wire(client.receive())
    assert (got.ok, got.error, got.message) == (False, ErrorCode.WRONG_STATE, "coco: is stopped")
    with pytest.raises(RequestError) as err:
        got.unwrap()
    assert err.value.code is ErrorCode.WRONG_STATE
    assert Response.from_wire(Response.success([{"name": "x"}]).to_wire()).unwrap() == [{"name": "x"}]


def test_an_oversized_message_is_refused_on_both_sides(pair):
    client, server = pair
    with pytest.raises(ProtocolError, match="limit"):
        encode({"text": "x" * MAX_MESSAGE_BYTES})
    # No newline: the reader must give up at the limit rather than buffer the whole stream.
    sender = threading.Thread(target=lambda: _send_quietly(client.sock, b"x" * (MAX_MESSAGE_BYTES * 4)))
    sender.start()
    with pytest.raises(ProtocolError, match="limit"):
        server.receive()
    server.close()
    sender.join(10)
    assert not sender.is_alive()


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass  # the reader hung up: expected


def test_garbage_and_truncation_are_protocol_errors(pair):
    client, server = pair
    with pytest.raises(ProtocolError):
        decode(b"{not json\n")
    with pytest.raises(ProtocolError):
        decode(b"[1, 2]\n")
    client.sock.sendall(b'{"ok": tr')
    client.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="middle"):
        server.receive()


def test_a_closed_connection_between_messages_is_none(pair):
    client, server = pair
    client.sock.shutdown(socket.SHUT_WR)
    assert server.receive() is None


def test_version_and_shape_are_checked():
    with pytest.raises(RequestError) as err:
        Request.from_wire({"v": 99, "cmd": "status"})
    assert err.value.code is ErrorCode.USAGE
    with pytest.raises(RequestError):
        Request.from_wire({"v": 1, "cmd": ["status"]})


def test_unknown_error_codes_from_a_newer_daemon_are_internal():
    assert Response.from_wire({"ok": False, "error": "martian", "message": "?"}).error is ErrorCode.INTERNAL


def test_exit_codes_are_the_documented_ones():
    assert {c.value: EXIT_CODES[c] for c in ErrorCode} == {
        "internal": 1, "usage": 2, "invalid": 2, "not_running": 3, "unknown_job": 4, "wrong_state": 5,
        "permission": 6}


def test_the_exit_status_table_has_every_error_code_once():
    codes = [code for code, _status, _meaning in EXIT_STATUSES]
    assert sorted(codes) == sorted(ErrorCode) and len(codes) == len(set(codes))
    assert EXIT_OK not in EXIT_CODES.values()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_cli_help_lists_exactly_the_tables_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    help_text = _one_line(capsys.readouterr().out)
    assert f"exit status: {exit_status_text()}" in help_text
    epilog = help_text[help_text.index("exit status: "):]
    listed = [int(n) for n in re.findall(r"(?:^exit status: |, )(\d+) ", epilog)]
    assert listed == sorted({EXIT_OK} | {status for _code, status, _meaning in EXIT_STATUSES})
    for _code, _status, meaning in EXIT_STATUSES:
        assert meaning in epilog


def test_readme_exit_status_paragraph_is_the_table():
    paragraphs = [_one_line(p) for p in README.read_text().split("\n\n")]
    documented = [p for p in paragraphs if p.startswith("Exit status:")]
    assert documented == [f"Exit status: {exit_status_text('`')}. Errors are one line on stderr."]


def test_connect_says_not_running_for_a_missing_or_dead_socket(tmp_path):
    with pytest.raises(RequestError) as err:
        connect(tmp_path / "nothing.sock")
    assert err.value.code is ErrorCode.NOT_RUNNING
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    with pytest.raises(RequestError) as err:
        connect(dead)
    assert err.value.code is ErrorCode.NOT_RUNNING


def test_wire_format_is_plain_json():
    line = encode(Request("tail", {"name": "a", "lines": 5}).to_wire())
    assert json.loads(line) == {"v": 1, "cmd": "tail", "args": {"name": "a", "lines": 5}}


# -- issue 10: a slow client gets a deadline, not a slot forever ----------------------------------
def test_a_request_trickled_one_byte_at_a_time_is_cut_off_at_its_deadline(tmp_path, monkeypatch):
    import socket
    import threading
    import time

    from supervisor.control import server as server_mod
    from supervisor.daemon.core import Daemon
    from supervisor.paths import Home

    monkeypatch.setattr(server_mod, "REQUEST_DEADLINE_S", 1.0, raising=False)
    daemon = Daemon(Home(tmp_path / "home"))
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [daemon.step(0.05) for _ in iter(stop.is_set, True)], daemon=True)
    loop.start()
    srv = server_mod.ControlServer(daemon, tmp_path / "ctl.sock")
    srv.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(tmp_path / "ctl.sock"))
            s.settimeout(0.3)
            began = time.monotonic()
            closed = False
            while time.monotonic() - began < 8 and not closed:
                try:
                    s.sendall(b" ")  # one byte now and then: each read alone is quick
                    closed = s.recv(1) == b""
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed, "the trickling client kept its slot"
            assert time.monotonic() - began < 5
    finally:
        srv.close()
        stop.set()
        loop.join(5)
        daemon.store.close()
