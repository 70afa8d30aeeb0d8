"""The web view over real HTTP, no browser: the login flow, the Unix socket's identity, CSRF, and
actions through the control socket's path. Training is the fake trainer (the browser test in
test_web_browser.py runs the real one)."""

import json
import os
import stat

from supervisor.control.peer import actor_for_uid
from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket
from tests.web_client import Web, free_port, web_config


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def test_web_is_off_unless_configured(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    done = ctl(fake_daemon.home, "web")
    assert done.returncode == 5 and "web view is off" in done.stderr
    assert not (fake_daemon.home / "web.sock").exists()


def test_login_session_csrf_and_actions(fake_daemon):
    home = fake_daemon.home
    port = free_port()
    web_config(home, port)
    fake_daemon.start()
    wait_socket(fake_daemon)
    fake_daemon.drop(cpu_job("webfake", FAKE_DATA, epochs=2))
    fake_daemon.wait_state("webfake", "running", timeout=120)

    web = Web(f"http://127.0.0.1:{port}")
    status, body = web.json("GET", "/api/overview")
    assert status == 401 and body["error"] == "login"
    assert web.request("GET", "/").status == 401

    # the URL `web` prints logs in once, as the uid the control socket saw
    out = ok(ctl(home, "web"))
    url = out.splitlines()[0]
    assert url.startswith(f"http://127.0.0.1:{port}/login?token=") and f"ssh -L 8787:{home / 'web.sock'}" in out
    resp = web.login(url)
    assert resp.status == 303 and resp.getheader("Location") == "/"
    assert "HttpOnly" in resp.getheader("Set-Cookie") and "SameSite=Strict" in resp.getheader("Set-Cookie")
    assert Web(f"http://127.0.0.1:{port}").login(url).status == 403  # spent
    status, me = web.json("GET", "/api/me")
    assert status == 200 and me["uid"] == os.geteuid() and me["via"] == "session"

    status, overview = web.json("GET", "/api/overview")
    assert [j["name"] for j in overview["jobs"]] == ["webfake"] and overview["jobs"][0]["state"] == "running"
    status, page = web.json("GET", "/api/job/webfake")
    assert status == 200 and page["attempts"][0]["number"] == 1 and page["events"]
    assert web.json("GET", "/api/job/nosuch")[0] == 404

    # a live stream starts with the current state
    resp = web.request("GET", "/api/overview/stream")
    assert resp.getheader("Content-Type") == "text/event-stream"
    first = b""
    while b"\n\n" not in first:
        first += resp.read1(65536)
    kind, data = first.split(b"\n\n")[0].split(b"\n")
    assert kind == b"event: overview" and json.loads(data[len(b"data: "):])["jobs"][0]["name"] == "webfake"
    resp.close()

    # CSRF: no token, or a foreign page's Origin: refused, nothing done
    assert web.json("POST", "/api/job/webfake/stop")[0] == 403
    status, body = web.json("POST", "/api/job/webfake/stop",
                            {"X-CSRF-Token": me["csrf"], "Origin": "http://evil.example"})
    assert status == 403 and body["error"] == "csrf"
    assert fake_daemon.job("webfake").state == "running"

    # with it: the same stop as the CLI's, by the same user
    status, job = web.json("POST", "/api/job/webfake/stop",
                           {"X-CSRF-Token": me["csrf"], "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and job["state"] in ("stopping", "stopped")
    fake_daemon.wait_state("webfake", "stopped", timeout=120)
    assert any(e.to_state == "stopping" and e.actor == actor_for_uid(os.geteuid())
               for e in fake_daemon.events("webfake"))
    status, body = web.json("POST", "/api/job/webfake/stop", {"X-CSRF-Token": me["csrf"]})
    assert status == 409 and body["exit"] == 5  # what the CLI says: wrong state

    # logout ends the session
    assert web.request("POST", "/logout").status == 303
    assert web.json("GET", "/api/me")[0] == 401

    # usage: the job's hours, as the CLI shows them
    report = json.loads(ok(ctl(home, "usage", "--since", "1d", "--json")))
    [row] = report["jobs"]
    assert row["job"] == "webfake" and row["hours"] > 0 and row["gpu_hours"] == 0 and row["attempts"] == 1
    assert "GPU-HOURS" in ok(ctl(home, "usage"))
    assert ctl(home, "usage", "--since", "soon").returncode == 2


def test_unix_socket_serves_its_peer(fake_daemon):
    home = fake_daemon.home
    web_config(home, free_port())
    fake_daemon.start()
    wait_socket(fake_daemon)
    sock = wait_for(lambda: (home / "web.sock").is_socket() and home / "web.sock", 30, what="web.sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == stat.S_IMODE(os.stat(home / "supervisor.sock").st_mode)

    web = Web(unix=sock)
    status, me = web.json("GET", "/api/me", {"Host": "localhost:8787"})
    assert status == 200 and me["uid"] == os.geteuid() and me["via"] == "unix socket"  # SO_PEERCRED, no login
    # a page of another site that a DNS record points at the tunnel: not answered
    assert web.request("GET", "/api/me", {"Host": "evil.example:8787"}).status == 421
    status, body = web.json("POST", "/api/job/x/stop", {"Host": "localhost:8787"})
    assert status == 403 and body["error"] == "csrf"
    status, body = web.json("POST", "/api/job/x/stop", {"Host": "localhost:8787", "X-CSRF-Token": me["csrf"]})
    assert status == 404 and body["exit"] == 4  # through to dispatch: no such job


def test_live_pages_are_bounded_and_the_daemon_keeps_answering(fake_daemon):
    """Browsers that hold streams open, and a client that connects and says nothing, take threads of
    the web server, never the daemon's loop: the CLI answers at once, and a ninth stream of one
    user is refused."""
    import socket
    import time

    from supervisor.web.service import MAX_STREAMS_PER_UID

    home = fake_daemon.home
    port = free_port()
    web_config(home, port)
    fake_daemon.start()
    wait_socket(fake_daemon)
    sock = wait_for(lambda: (home / "web.sock").is_socket() and home / "web.sock", 30, what="web.sock")
    silent = socket.create_connection(("127.0.0.1", port))  # never sends a request
    streams = [Web(unix=sock).request("GET", "/api/overview/stream", {"Host": "localhost"})
               for _ in range(MAX_STREAMS_PER_UID)]
    try:
        assert all(s.status == 200 for s in streams)
        extra = Web(unix=sock).request("GET", "/api/overview/stream", {"Host": "localhost"})
        assert extra.status == 503
        start = time.monotonic()
        ok(ctl(home, "status"))
        assert time.monotonic() - start < 20  # a process start and one request; nothing waited on the streams
    finally:
        silent.close()
        for s in streams:
            s.close()
    # the slots come back when the browsers go away
    wait_for(lambda: Web(unix=sock).request("GET", "/api/overview/stream", {"Host": "localhost"}).status == 200,
             30, what="a stream slot given back")
