"""Each job belongs to its owner: two users of one shared server (issue 19, tenancy).

A real root daemon with ``socket_group`` and ``admin_group`` set, real throwaway accounts: alice
and mallory in the socket group, boss in the admin group too, eve in neither. Every request is
sent by a real process running as that user over the real Unix socket (the kernel's SO_PEERCRED
names them); jobs run the test-only fake trainer on the system python as their owner.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from supervisor.control.protocol import EXIT_CODES, ErrorCode
from supervisor.process.launcher import DAEMON_ENV, JOB_ENV
from tests.accounts import SYSTEM_PYTHON, Account, accounts, open_dir, root_secret  # noqa: F401 - fixtures
from tests.conftest import FAKE_DATA, FAKE_TRAINER, DaemonProcess, ctl, kill_job_processes, wait_for, wait_socket

# The client a user runs: stdlib only (root's venv is out of their reach), the protocol's one line each way.
CLIENT = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except PermissionError as err:
    print(json.dumps({"ok": False, "error": "connect", "message": str(err)}))
    sys.exit(0)
sock.sendall(json.dumps({"v": 1, "cmd": sys.argv[2], "args": json.loads(sys.argv[3])}).encode() + b"\n")
print(sock.makefile("rb").readline().decode(), end="")
"""
# What the user can read of a path: the first bytes, or the error.
READER = r"""
import sys
try:
    with open(sys.argv[1], "rb") as f:
        print("read:", f.read(64))
except OSError as err:
    print("error:", err.strerror)
"""
ADMIN_SECRET = "root-admin-token-4711"


@dataclass
class Server:
    daemon: DaemonProcess
    alice: Account
    mallory: Account
    boss: Account
    eve: Account
    root: Path


def run_as(acct: Account, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, *argv], user=acct.uid, group=acct.gid,
                          extra_groups=os.getgrouplist(acct.name, acct.gid), capture_output=True, text=True,
                          timeout=60, cwd="/", **kwargs)


def as_user(server: Server, acct: Account, cmd: str, **args) -> dict:
    """One request sent by a process of ``acct``; the daemon's answer as JSON."""
    done = run_as(acct, "-c", CLIENT, str(server.daemon.home / "supervisor.sock"), cmd, json.dumps(args))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def job_text(name: str, **extra) -> str:
    spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA), "epochs": 2, "device": "cpu"},
            "restart": {"max_restarts": 5, "backoff": {"initial": 0.2, "max": 1, "factor": 2}}}
    spec.update(extra)
    return yaml.safe_dump(spec)


def submit(server: Server, acct: Account, name: str, **extra) -> dict:
    return as_user(server, acct, "submit", text=job_text(name, **extra), source=f"{name}.yaml")


def running(server: Server, name: str, attempt: int = 1):
    def check():
        job = server.daemon.job(name)
        assert job is None or job.state != "failed", job.state_reason
        return job if job is not None and job.state == "running" and job.attempts == attempt and job.pid else None
    try:
        return wait_for(check, 60, what=f"{name} running attempt {attempt}")
    except AssertionError:
        job = server.daemon.job(name)
        log = server.daemon.home / "jobs" / name / "train.log"
        raise AssertionError(f"{name}: {job and (job.state, job.state_reason, job.attempts)}; log: "
                             f"{log.read_text()[-1500:] if log.exists() else None}; daemon: "
                             f"{server.daemon.log.read_text()[-1500:]}") from None


def refused(answer: dict, owner: Account) -> bool:
    return answer["ok"] is False and answer["error"] == "permission" and owner.name in answer["message"]


@pytest.fixture
def server(open_dir, accounts, monkeypatch):  # noqa: F811
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a job as another user")
    members, admins = accounts.group(), accounts.group()
    alice, mallory = accounts.make((members,)), accounts.make((members,))
    boss, eve = accounts.make((members, admins)), accounts.make()
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    monkeypatch.setenv("YOLO_SUPERVISOR_CHILD_PYTHON", SYSTEM_PYTHON)
    monkeypatch.setenv("ADMIN_TOKEN", ADMIN_SECRET)  # root's own environment: no job may see it
    home = open_dir / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"socket_group": members.name, "admin_group": admins.name,
                                                      "tick_s": 0.5}))
    d = DaemonProcess(home)
    d.start()
    wait_socket(d)
    yield Server(d, alice, mallory, boss, eve, open_dir)
    d.stop()
    for job in (d.home / "jobs").glob("*"):
        kill_job_processes(job.name)


def test_another_member_can_do_nothing_to_a_job_but_see_it_in_the_queue(server):
    assert submit(server, server.alice, "a1")["ok"]
    before = running(server, "a1")
    attacks = [("stop", {}), ("start", {}), ("restart", {}), ("edit", {"values": {"data": "/tmp/hers.yaml"}}),
               ("edit", {"values": {"batch": 1, "imgsz": 32}, "force": True}), ("extend", {"epochs": 9}),
               ("remove", {"purge": True}), ("notify-test", {}), ("tail", {}), ("log", {}), ("results", {})]
    for cmd, args in attacks:
        answer = as_user(server, server.mallory, cmd, name="a1", **args)
        assert refused(answer, server.alice), (cmd, answer)
    assert EXIT_CODES[ErrorCode.PERMISSION] == 6  # what the CLI exits with on that answer

    after = server.daemon.job("a1")
    assert (after.state, after.attempts, after.pid) == ("running", 1, before.pid)
    assert yaml.safe_load(after.spec_yaml)["train"]["data"] == str(FAKE_DATA)
    assert not [e for e in server.daemon.events("a1") if server.mallory.name in (e.actor or "")]
    # Reading the queue stays open, as squeue is; the admins' own targets are for admins to test.
    status = as_user(server, server.mallory, "status")
    assert status["ok"] and [j["name"] for j in status["data"]] == ["a1"]
    assert as_user(server, server.mallory, "history", name="a1")["ok"]
    assert as_user(server, server.mallory, "notify-test")["error"] == "permission"
    assert as_user(server, server.eve, "status")["error"] == "connect"  # outside the socket group

    assert as_user(server, server.alice, "tail", name="a1")["ok"]  # her own job
    assert as_user(server, server.boss, "stop", name="a1")["ok"]   # an admin: anyone's
    server.daemon.wait_state("a1", "stopped", timeout=60)
    assert as_user(server, server.alice, "start", name="a1")["ok"]
    running(server, "a1", attempt=2)


def test_a_name_another_user_holds_is_refused_and_their_files_stay(server):
    assert submit(server, server.alice, "a1")["ok"]
    running(server, "a1")
    answer = submit(server, server.mallory, "a1", train={"model": "yolov8n.yaml", "data": "/tmp/hers.yaml",
                                                          "epochs": 1})
    assert answer["ok"] is False and answer["error"] == "invalid"
    assert server.alice.name in answer["message"] and "taken" in answer["message"]
    assert server.daemon.job("a1").owner_uid == server.alice.uid
    assert not (server.daemon.home / "jobs" / ".removed").exists()  # nothing of hers archived away


def test_the_database_and_the_job_files_are_private(server):
    assert submit(server, server.alice, "a1", notify={"urls": ["json://hooks.example.com/alice-private-token"]})["ok"]
    running(server, "a1")
    home = server.daemon.home
    db = home / "state.db"
    wait_for(lambda: (home / "state.db.backup").exists(), 30, what="the first backup")
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), home / "state.db.backup"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600), path
    job_dir = home / "jobs" / "a1"
    wait_for(lambda: (job_dir / "progress.json").exists(), 30, what="the child's progress file")
    assert (job_dir.stat().st_uid, oct(job_dir.stat().st_mode & 0o777)) == (server.alice.uid, oct(0o700))
    for name in ("train.log", "attempt.json", "progress.json"):
        assert oct((job_dir / name).stat().st_mode & 0o077) == oct(0), name
    for who in (server.eve, server.mallory):  # eve cannot connect; neither reads the database or her log
        for path in (db, home / "state.db.backup", job_dir / "train.log"):
            out = run_as(who, "-c", READER, str(path)).stdout
            assert out.startswith("error: Permission denied"), (who.name, path, out)
    assert run_as(server.alice, "-c", READER, str(job_dir / "train.log")).stdout.startswith("read:")

    inode = db.stat().st_ino
    db.unlink()  # written back from the open database within a tick: private again
    wait_for(lambda: db.exists() and db.stat().st_ino != inode, 30, what="state.db written back")
    assert oct(db.stat().st_mode & 0o777) == oct(0o600)


def proc_env(pid: int) -> dict[str, str]:
    return dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)


def test_a_job_runs_in_an_environment_built_for_its_owner_not_roots(server):
    assert submit(server, server.alice, "a1")["ok"]
    env = proc_env(running(server, "a1").pid)
    account = pwd.getpwnam(server.alice.name)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (account.pw_dir, server.alice.name, server.alice.name)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # not root's
    assert "ADMIN_TOKEN" not in env and ADMIN_SECRET not in json.dumps(env)
    assert env[JOB_ENV] == "a1"


def test_a_jobs_env_and_env_file_reach_it_and_are_never_shown(server):
    alice = server.alice
    keys = server.root / "alice-keys"
    keys.mkdir(mode=0o700)
    (keys / "keys.env").write_text("# alice's keys\nexport MLFLOW_TRACKING_TOKEN='mlflow-secret-2'\n")
    for path in (keys, keys / "keys.env"):
        os.chown(path, alice.uid, alice.gid)
    (keys / "keys.env").chmod(0o600)
    assert submit(server, alice, "a1", env={"WANDB_API_KEY": "wandb-secret-1"}, env_file=str(keys / "keys.env"))["ok"]
    env = proc_env(running(server, "a1").pid)
    assert (env["WANDB_API_KEY"], env["MLFLOW_TRACKING_TOKEN"]) == ("wandb-secret-1", "mlflow-secret-2")
    assert env["USER"] == alice.name and "ADMIN_TOKEN" not in env

    shown = [json.dumps(as_user(server, server.mallory, cmd, **args))
             for cmd, args in (("status", {}), ("history", {"name": "a1"}), ("events", {}))]
    shown += [ctl(server.daemon.home, *argv).stdout for argv in (["status"], ["history", "a1"], ["events"])]
    shown.append(server.daemon.log.read_text())
    for text in shown:
        assert "wandb-secret-1" not in text and "mlflow-secret-2" not in text


def test_an_env_file_is_read_as_the_owner(server, open_dir):  # noqa: F811
    secret = root_secret(open_dir, "root.env", "ROOT_KEY=root-only-value\n")
    assert submit(server, server.alice, "a1", env_file=str(secret))["ok"]
    job = server.daemon.wait_state("a1", "failed", timeout=60)
    assert "env_file" in job.state_reason and "Permission denied" in job.state_reason
    assert "root-only-value" not in job.state_reason


def test_a_job_files_notify_target_on_this_host_is_refused_at_submit(server):
    for url in ("json://127.0.0.1:9/internal/admin?+Authorization=Bearer%20x", "json://localhost:9/admin",
                "json://169.254.169.254/latest/meta-data", "json://10.0.0.1/hook"):
        answer = submit(server, server.alice, "n1", notify={"urls": [url]})
        assert answer["ok"] is False and answer["error"] == "invalid", (url, answer)
        assert "notify.urls[0]" in answer["message"] and "allow_hosts" in answer["message"], answer
        assert "Authorization" not in answer["message"]  # the URL, a secret, is not quoted
    answer = submit(server, server.alice, "n1", notify={"urls": ["fcm://project/topic?keyfile=/etc/shadow"]})
    assert answer["error"] == "invalid" and "local file" in answer["message"]
    assert server.daemon.job("n1") is None


def test_a_drop_file_others_may_write_is_rejected_with_the_fix(server):
    inbox = server.daemon.home / "inbox"
    tmp = inbox / ".g1.tmp"
    tmp.write_text(job_text("g1"))
    os.chown(tmp, server.alice.uid, server.alice.gid)
    tmp.chmod(0o664)  # umask 002 in a setgid inbox: every member may rewrite it
    tmp.rename(inbox / "g1.yaml")
    error = inbox / "rejected" / "g1.yaml.error"
    wait_for(error.exists, 30, what="the rejection")
    assert "chmod go-w" in error.read_text() and "group or others" in error.read_text()
    assert server.daemon.job("g1") is None


def test_events_escape_control_characters_like_history(server):
    forged = "/nowhere\n2026-12-01 00:00:00  a1  state running->stopped: forged\x1b[2J.yaml"
    answer = submit(server, server.mallory, "m1", train={"model": "yolov8n.yaml", "data": forged, "epochs": 1,
                                                          "device": "cpu"})
    assert answer["ok"], answer
    wait_for(lambda: any(e.kind == "preflight" for e in server.daemon.events("m1")), 60, what="the preflight hold")
    out = ctl(server.daemon.home, "events").stdout
    assert "\x1b" not in out
    assert not [ln for ln in out.splitlines() if ln.startswith("2026-12-01 00:00:00")]
    assert "\\n2026-12-01" in out and "\\x1b[2J" in out


def test_edit_goes_through_the_bounded_loader(server):
    assert submit(server, server.alice, "a1")["ok"]
    running(server, "a1")
    assert as_user(server, server.alice, "stop", name="a1")["ok"]
    server.daemon.wait_state("a1", "stopped", timeout=60)
    deep: object = 4
    for _ in range(40):
        deep = [deep]
    answer = as_user(server, server.alice, "edit", name="a1", values={"workers": deep})
    assert answer["ok"] is False and answer["error"] == "invalid" and "nested" in answer["message"], answer
    assert as_user(server, server.alice, "edit", name="a1", values={"workers": 2})["ok"]  # still editable
    assert as_user(server, server.alice, "start", name="a1")["ok"]
    running(server, "a1", attempt=2)


def test_a_forged_marker_reaches_only_the_forgers_own_processes(server):
    assert submit(server, server.alice, "a1")["ok"]
    running(server, "a1")
    marker = {JOB_ENV: "a1", DAEMON_ENV: str(server.daemon.home.resolve()), "PATH": "/usr/bin:/bin"}
    forged = subprocess.Popen(["sleep", "300"], user=server.mallory.uid, group=server.mallory.gid, env=marker,
                              start_new_session=True)
    try:
        assert as_user(server, server.alice, "restart", name="a1")["ok"]
        running(server, "a1", attempt=2)
        assert forged.poll() is None, "root signalled mallory's process"
        assert not [e for e in server.daemon.events("a1") if e.kind == "orphans"]
    finally:
        forged.send_signal(signal.SIGKILL)
        forged.wait()
