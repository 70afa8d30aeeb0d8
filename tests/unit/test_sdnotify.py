"""sd_notify against a real datagram socket, as systemd would listen."""

import os
import socket
import uuid

import pytest

from supervisor.daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def received(sock):
    return sock.recv(4096).decode().split("\n")


def test_ready_and_status_reach_the_socket(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready("2 running")
    assert received(sock) == ["READY=1", "STATUS=2 running"]
    assert n.status("3 running") and received(sock) == ["STATUS=3 running"]
    assert not n.status("3 running")  # unchanged: nothing sent


def test_abstract_namespace_address():
    name = f"yolo-supervisor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_interval(listener):
    sock, path = listener
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=lambda: now[0])
    assert n.watchdog_interval == 10.0
    assert n.watchdog() and received(sock) == ["WATCHDOG=1"]
    now[0] += 4.9
    assert not n.watchdog()
    now[0] += 0.2
    assert n.watchdog() and received(sock) == ["WATCHDOG=1"]


def test_watchdog_meant_for_another_process_is_ignored(listener):
    _, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval is None and not n.watchdog()


def test_without_systemd_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x")
