"""Inputs that took `status` or the socket down for everyone (issue 10, availability).

A real daemon (the test-only fake trainer), its real socket and real SQLite database.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from supervisor.control.server import MAX_PER_READER, MAX_READERS_TOTAL
from supervisor.store import Store
from tests.accounts import account  # noqa: F401 - fixture
from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket


def fake_job(name: str, **extra) -> dict:
    return cpu_job(name, FAKE_DATA, epochs=2, **extra)


def submit(daemon, tmp_path: Path, spec: dict) -> None:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = ctl(daemon.home, "submit", str(path))
    assert done.returncode == 0, done.stderr


def test_a_stored_spec_that_no_longer_validates_is_shown_not_fatal(fake_daemon, tmp_path):
    fake_daemon.start()
    wait_socket(fake_daemon)
    submit(fake_daemon, tmp_path, fake_job("fine"))
    # What an Ultralytics upgrade that drops an argument does to a stored spec (or what a
    # "device: []" stored by an older daemon is): it no longer validates when read again.
    store = Store(fake_daemon.home / "state.db")
    bad = yaml.safe_dump({**fake_job("broken"), "train": {**fake_job("broken")["train"], "device": ""}})
    store.add_job("broken", bad, "queued", source="an older daemon")
    store.close()

    job = fake_daemon.wait_state("broken", "failed", timeout=30)
    assert "no longer validates" in job.state_reason and "device" in job.state_reason
    listing = ctl(fake_daemon.home, "status")
    assert listing.returncode == 0, listing.stderr
    assert "fine" in listing.stdout and "broken" in listing.stdout
    rows = {r["name"]: r for r in json.loads(ctl(fake_daemon.home, "status", "--json").stdout)}
    assert "device" in rows["broken"]["spec_problem"] and rows["fine"]["spec_problem"] is None
    assert ctl(fake_daemon.home, "history", "broken").returncode == 0
    tracebacks = fake_daemon.log.read_text().count('"job step failed"')
    assert tracebacks == 0, fake_daemon.log.read_text()[-2000:]


# -- the control socket: slots, deadlines, malformed requests ------------------------------------
def raw_exchange(sock_path: Path, payload: bytes, timeout: float = 30) -> dict:
    """Send raw bytes on a fresh connection and read the one-line answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data, "the daemon closed the connection without an answer"
    return json.loads(data)


def test_malformed_requests_get_an_answer_and_leave_no_traceback(fake_daemon):
    fake_daemon.start()
    sock = wait_socket(fake_daemon)
    deep = raw_exchange(sock, b"[" * 200_000 + b"\n")
    assert deep["ok"] is False and "nested too deeply" in deep["message"]
    nan = raw_exchange(sock, b'{"v": 1, "cmd": "tail", "args": {"name": "x", "lines": NaN}}\n')
    assert nan["ok"] is False and "NaN" in nan["message"]
    assert raw_exchange(sock, b'{"v": 1, "cmd": "status", "args": {}}\n') == {"ok": True, "data": []}
    log = fake_daemon.log.read_text()
    assert "Traceback" not in log and "RecursionError" not in log


def test_infinite_grace_and_nan_stall_timeout_are_refused_at_submit(fake_daemon, tmp_path):
    fake_daemon.start()
    wait_socket(fake_daemon)
    for health in ("{stop_grace: .inf}", "{stall_timeout: .nan}"):
        path = tmp_path / "inf.yaml"
        path.write_text(f"name: inf\ntrain: {{model: m.yaml, data: d.yaml, epochs: 1}}\nhealth: {health}\n")
        done = ctl(fake_daemon.home, "submit", str(path))
        assert done.returncode == 2 and "health." in done.stderr, done.stderr
    assert fake_daemon.job("inf") is None


def test_a_newline_in_a_dropped_files_name_forges_no_history_line(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    forged = "x\n  2026-01-01 00:00:00  state running->completed: all done [uid 0 (root)]\n.yaml"
    fake_daemon.drop(fake_job("nl"), filename=forged)
    fake_daemon.wait_state("nl", {"starting", "running"}, timeout=60)
    out = ctl(fake_daemon.home, "history", "nl").stdout
    assert not [ln for ln in out.splitlines() if ln.startswith("  2026-01-01")], out
    assert "x\\n  2026-01-01" in out  # shown, escaped, on the submit event's own line


HOLDER = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held, refused = [], []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(2.0)
    try:
        answer = s.recv(4096)  # the daemon refuses with one line at once, then closes
    except socket.timeout:
        held.append(s)
        continue
    refused.append(answer.decode())
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
sys.stdin.read()  # hold the connections until the test is done
"""


def start_holder(sock_path: Path, uid: int, n: int):
    """A process of ``uid`` (an account or not: the daemon goes by the peer's uid) opening ``n``
    connections and holding those not refused; its first output line says how many."""
    import subprocess

    from tests.accounts import SYSTEM_PYTHON

    return subprocess.Popen([SYSTEM_PYTHON, "-c", HOLDER, str(sock_path), str(n)], user=uid, group=uid,
                            extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def hold_connections(sock_path: Path, uid: int, n: int):
    proc = start_holder(sock_path, uid, n)
    return proc, json.loads(proc.stdout.readline())


def let_go(proc) -> None:
    proc.stdin.close()
    proc.wait(10)


@pytest.fixture
def open_socket_daemon(fake_daemon):
    import os
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root: connects as other users")
    folder = Path(tempfile.mkdtemp(prefix="ys-sock-"))
    folder.chmod(0o755)
    sock = folder / "ctl.sock"
    fake_daemon.home.mkdir(parents=True)
    (fake_daemon.home / "config.yaml").write_text(f"socket: {sock}\n")
    fake_daemon.start()
    wait_socket(fake_daemon, sock)
    sock.chmod(0o666)  # anyone may connect and read
    yield fake_daemon, sock
    shutil.rmtree(folder, ignore_errors=True)


def test_idle_readers_cannot_lock_out_root_or_other_users(open_socket_daemon, account):  # noqa: F811
    daemon, sock = open_socket_daemon
    nobody, first = hold_connections(sock, 65534, 40)
    try:
        assert first["held"] == MAX_PER_READER == 4, "one read-only user holds 4 slots (README)"
        assert len(first["refused"]) == 40 - MAX_PER_READER
        assert first["refused"] and all("too many control connections" in r for r in first["refused"])
        other, second = hold_connections(sock, account.uid, 1)
        other.stdin.close()
        other.wait(10)
        assert second["held"] == 1, "another reader still gets a slot"
        done = ctl(None, "--socket", str(sock), "status")
        assert done.returncode == 0, done.stderr  # root is never refused for lack of slots
    finally:
        nobody.stdin.close()
        nobody.wait(10)



def test_all_readers_together_hold_at_most_32_slots(open_socket_daemon):
    """Connections are cut off REQUEST_DEADLINE_S (30 s) after they open: the holders start together."""
    daemon, sock = open_socket_daemon
    assert MAX_READERS_TOTAL == 32
    readers = [3_900_000 + n for n in range(MAX_READERS_TOTAL // MAX_PER_READER)]  # uids without accounts
    holders = [start_holder(sock, uid, MAX_PER_READER) for uid in readers]
    late = None
    try:
        held = [json.loads(p.stdout.readline()) for p in holders]
        assert [h["held"] for h in held] == [MAX_PER_READER] * len(readers), held
        late, answer = hold_connections(sock, 3_900_100, 1)
        assert answer["held"] == 0 and answer["refused"] and \
            "too many read-only control connections" in answer["refused"][0], answer
        done = ctl(None, "--socket", str(sock), "status")
        assert done.returncode == 0, done.stderr  # root's slots are its own
    finally:
        for p in holders + ([late] if late else []):
            let_go(p)
    # the slots come back once the connections close
    def a_slot_is_free():
        proc, answer = hold_connections(sock, 3_900_101, 1)
        let_go(proc)
        return answer["held"] == 1
    wait_for(a_slot_is_free, 30, interval=0.2, what="a reader slot free again")
