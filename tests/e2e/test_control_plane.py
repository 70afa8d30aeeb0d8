"""The control plane end to end: a real daemon, its real Unix socket, the CLI as a subprocess.

Real CPU training where checkpoints matter (stop/start resumes, daemon restart);
the test-only fake trainer elsewhere (exit codes, permissions, tail -f).
"""

import grp
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import psutil
import pytest
import yaml

from supervisor.contract import read_json
from supervisor.control import cli
from supervisor.process.launcher import job_processes
from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket

NOBODY = 65534


def progress(daemon, name):
    return read_json(daemon.home / "jobs" / name / "progress.json") or {}


def wait_training_in_epoch(daemon, name, epoch, timeout=240):
    """Until the child reports a trained batch in ``epoch`` (1-based) or later."""
    return wait_for(lambda: ((p := progress(daemon, name)).get("epoch") or 0) >= epoch and (p.get("batch") or 0) >= 1
                    and p.get("phase") == "training", timeout, what=f"{name} training in epoch {epoch}")


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def fails(result: subprocess.CompletedProcess, code: int, text: str) -> str:
    """A CLI error: the documented exit status and one line on stderr naming the problem."""
    assert result.returncode == code, f"exit {result.returncode} (wanted {code}): {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    return lines[0]


def write_job(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fake_job(name: str, **extra) -> dict:
    return cpu_job(name, FAKE_DATA, epochs=2, **extra)


# -- a real training, driven only through the CLI ----------------------------------------
def test_cli_drives_a_real_training(daemon, dataset, tmp_path):
    daemon.start()
    wait_socket(daemon)
    home = daemon.home
    assert "submitted ctl: " in ok(ctl(home, "submit", str(write_job(tmp_path, cpu_job("ctl", dataset, epochs=8)))))

    [row] = json.loads(ok(ctl(home, "status", "--json")))
    assert {"name", "state", "pid", "epoch", "epochs", "restarts", "last_cause", "run_dir",
            "state_reason"} <= row.keys()
    assert (row["name"], row["epochs"]) == ("ctl", 8)

    wait_training_in_epoch(daemon, "ctl", 3)
    table = ok(ctl(home, "status"))
    assert table.splitlines()[0].split()[:5] == ["NAME", "STATE", "GPUS", "PID", "EPOCH"]
    line = next(ln for ln in table.splitlines() if ln.startswith("ctl "))
    assert line.split()[:3] == ["ctl", "running", "cpu"]
    assert "running" in line and "/8" in line and "[" in line and str(daemon.job("ctl").pid) in line

    tail = ok(ctl(home, "tail", "-n", "3", "ctl", text=False))  # bytes: Ultralytics' bars use \r too
    assert len(tail.split(b"\n")) - tail.endswith(b"\n") == 3  # the last line may still be in progress
    assert tail in (home / "jobs" / "ctl" / "train.log").read_bytes()

    # stop: TERM to every process, the job stays stopped
    first_pid = daemon.job("ctl").pid
    ok(ctl(home, "stop", "ctl"))
    job = daemon.wait_state("ctl", "stopped", timeout=120)
    assert gone(first_pid) and not job_processes("ctl")
    assert job.pid is None
    assert any(e.kind == "state" and e.to_state == "stopping" and e.actor == "uid 0 (root)"
               for e in daemon.events("ctl"))
    fails(ctl(home, "stop", "ctl"), 5, "cannot stop a job that is stopped")

    # start: resumes from the checkpoint
    ok(ctl(home, "start", "ctl"))
    daemon.wait_state("ctl", "running", timeout=120)
    # restart: a third attempt, again resumed
    ok(ctl(home, "restart", "ctl"))
    second = daemon.attempts("ctl")[1]
    assert second.epochs_before >= 2 and second.resumed_from, second
    wait_for(lambda: len(daemon.attempts("ctl")) == 3, 120, what="a third attempt")
    job = daemon.wait_state("ctl", "completed", timeout=300)

    history = ok(ctl(home, "history", "ctl"))
    assert history.startswith("job ctl: completed")
    hist = json.loads(ok(ctl(home, "history", "--json", "ctl")))
    assert [a["number"] for a in hist["attempts"]] == [1, 2, 3]
    assert hist["attempts"][-1]["cause"] == "completed"
    assert all(a["epochs_before"] > 0 for a in hist["attempts"][1:])
    assert {"submitted", "state", "exit", "signal"} <= {e["kind"] for e in hist["events"]}

    # every transition is one structured log event with job, from, to, reason
    transitions = [json.loads(ln) for ln in daemon.log.read_text().splitlines()
                   if ln.startswith("{") and '"transition"' in ln]
    mine = [t for t in transitions if t.get("job") == "ctl"]
    assert mine and all({"from", "to", "reason"} <= t.keys() for t in mine)
    assert [t["to"] for t in mine].count("stopped") == 1 and mine[-1]["to"] == "completed"

    ok(ctl(home, "remove", "ctl"))
    fails(ctl(home, "status", "ctl"), 4, "no job named 'ctl'")
    assert (home / "jobs" / "ctl" / "train.log").exists(), "remove keeps files unless --purge"


# -- errors and exit codes ----------------------------------------------------------------
def test_cli_errors_have_exit_codes_and_one_line(fake_daemon, tmp_path):
    home = fake_daemon.home
    home.mkdir(parents=True)
    fails(ctl(home, "status"), 3, "not running")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home / "supervisor.sock"))
    stale.close()  # a socket file nobody listens on: what a killed daemon leaves
    fails(ctl(home, "status"), 3, "not running")

    fake_daemon.start()  # replaces the stale socket
    wait_socket(fake_daemon)
    assert ok(ctl(home, "status")).strip() == "no jobs"
    for cmd in (["status", "nosuch"], ["stop", "nosuch"], ["start", "nosuch"], ["restart", "nosuch"],
                ["tail", "nosuch"], ["history", "nosuch"], ["remove", "nosuch"]):
        fails(ctl(home, *cmd), 4, "no job named 'nosuch'")
    assert ctl(home).returncode == 2
    assert ctl(home, "tail", "-n", "-1", "x").returncode == 2
    fails(ctl(home, "stop", "../etc"), 2, "not a job name")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "train": {"model": "m.yaml", "data": "d.yaml"}}))
    fails(ctl(home, "submit", str(bad)), 2, "train: missing required key(s): epochs")
    fails(ctl(home, "submit", str(tmp_path / "missing.yaml")), 2, "No such file")

    ok(ctl(home, "submit", str(write_job(tmp_path, fake_job("f1")))))
    fails(ctl(home, "submit", str(write_job(tmp_path, fake_job("f1")))), 2, "already exists")
    fake_daemon.wait_state("f1", "running", timeout=60)
    fails(ctl(home, "start", "f1"), 5, "cannot start a job that is running")
    fails(ctl(home, "remove", "f1"), 5, "cannot remove a job that is running")
    pid = fake_daemon.job("f1").pid
    out = ok(ctl(home, "stop", "--wait", "--timeout", "60", "f1"))
    assert out.strip().splitlines()[-1].startswith("f1: stopped")
    assert gone(pid)
    fails(ctl(home, "stop", "f1"), 5, "cannot stop a job that is stopped")
    assert "removed f1" in ok(ctl(home, "remove", "--purge", "f1"))
    assert not (home / "jobs" / "f1").exists()
    fails(ctl(home, "remove", "f1"), 4, "no job named 'f1'")


def test_stop_and_start_of_a_job_that_waits_for_a_slot(fake_daemon, tmp_path):
    (fake_daemon.home).mkdir(parents=True)
    (fake_daemon.home / "config.yaml").write_text("max_running: 1\n")
    fake_daemon.start()
    home = wait_socket(fake_daemon).parent
    ok(ctl(home, "submit", str(write_job(tmp_path, fake_job("first")))))
    fake_daemon.wait_state("first", "running", timeout=60)
    ok(ctl(home, "submit", str(write_job(tmp_path, fake_job("second")))))
    assert fake_daemon.job("second").state == "queued"
    out = ok(ctl(home, "stop", "second"))
    assert out.startswith("second: stopped")  # at once: no process to wait for
    assert fake_daemon.attempts("second") == []
    ok(ctl(home, "start", "second"))
    assert fake_daemon.job("second").state == "queued"
    ok(ctl(home, "stop", "first"))
    fake_daemon.wait_state("second", "running", timeout=60)
    assert fake_daemon.job("first").state == "stopped"


def test_tail_follows_the_log_through_the_socket(fake_daemon, tmp_path):
    fake_daemon.start()
    home = wait_socket(fake_daemon).parent
    ok(ctl(home, "submit", str(write_job(tmp_path, fake_job("talker")))))
    fake_daemon.wait_state("talker", "running", timeout=60)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.control.cli", "--home", str(home),
                             "tail", "-f", "-n", "1", "talker"], stdout=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    try:
        seen = []

        def numbered():
            while not lines.empty():
                ln = lines.get()
                if ln.startswith("fake line "):
                    seen.append(int(ln.split()[2]))
            return len(seen) >= 5
        wait_for(numbered, 30, what="five lines followed")
        assert seen == list(range(seen[0], seen[0] + len(seen))), "followed lines are in order, none lost"
    finally:
        proc.terminate()
        proc.wait(10)


# -- socket permissions and peer credentials ------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as other users")
def test_socket_mode_and_peer_credentials(fake_daemon, tmp_path):
    group = next(g for g in grp.getgrall() if g.gr_gid not in (0, NOBODY))
    sock_dir = Path(tempfile.mkdtemp(prefix="ys-sock-"))
    sock_dir.chmod(0o755)  # pytest's tmp_path is 0700: nobody could not reach a socket there
    sock_path = sock_dir / "ctl.sock"
    fake_daemon.home.mkdir(parents=True)
    (fake_daemon.home / "config.yaml").write_text(f"socket: {sock_path}\nsocket_group: {group.gr_name}\n")
    fake_daemon.start()
    wait_socket(fake_daemon, sock_path)
    st = os.stat(sock_path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid

    def as_nobody(*args, groups=()):
        return cli_as(NOBODY, NOBODY, list(groups), ["--socket", str(sock_path), *args], tmp_path)

    ok(ctl(None, "--socket", str(sock_path), "submit", str(write_job(tmp_path, fake_job("guarded")))))
    fake_daemon.wait_state("guarded", "running", timeout=60)
    fails(as_nobody("status"), 6, "permission denied")  # 0660: not even a connection

    sock_path.chmod(0o666)  # let anyone connect: reading is allowed, changing is not
    assert "guarded" in ok(as_nobody("status"))
    fails(as_nobody("stop", "guarded"), 6, "permission denied: stop needs root")
    assert fake_daemon.job("guarded").state == "running"

    # A member of the socket group may submit, and act on their own jobs only (tests/e2e/test_tenancy.py).
    fails(as_nobody("stop", "guarded", groups=[group.gr_gid]), 6, "guarded is uid 0 (root)'s job")
    assert fake_daemon.job("guarded").state == "running"


def cli_as(uid: int, gid: int, groups: list[int], argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a forked child that first drops to ``uid``/``gid``/``groups``."""
    out, err = tmp / "cli.out", tmp / "cli.err"
    with open(out, "w+") as fout, open(err, "w+") as ferr:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                sys.stdout, sys.stderr = fout, ferr
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
                code = cli.main(argv)  # imported before the fork: the child may not read every path
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), out.read_text(), err.read_text())


# -- the daemon dies, the training does not ------------------------------------------------
def test_sigkilled_daemon_readopts_the_running_training(daemon, dataset):
    daemon.start()
    daemon.drop(cpu_job("adopt", dataset, epochs=6))
    wait_training_in_epoch(daemon, "adopt", 2)
    pid = daemon.job("adopt").pid
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(30)
    assert not gone(pid), "the training outlives its daemon"

    daemon.start()
    job = daemon.wait_state("adopt", "completed", timeout=300)
    attempts = daemon.attempts("adopt")
    assert [(a.number, a.pid, a.cause) for a in attempts] == [(1, pid, "completed")]
    assert job.attempts == 1
    assert any(e.kind == "adopted" for e in daemon.events("adopt"))


# -- systemd notifications and SIGHUP reload ------------------------------------------------
def test_sd_notify_and_sighup_reload(daemon, tmp_path, monkeypatch):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")

    def next_message(*wanted):
        while True:
            msg = notify.recv(4096).decode().split("\n")
            if any(w in msg for w in wanted):
                return msg

    try:
        daemon.start()
        assert "READY=1" in next_message("READY=1")
        next_message("WATCHDOG=1")
        next_message("WATCHDOG=1")  # pinged again: from the loop, every tick

        config = daemon.home / "config.yaml"
        config.write_text("tick_s: -1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        next_message("RELOADING=1")
        wait_for(lambda: "config reload failed" in daemon.log.read_text(), 30, what="a refused reload")
        daemon.assert_alive()

        config.write_text("max_running: 3\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"config reloaded"' in daemon.log.read_text(), 30, what="a reload")
        reloaded = [json.loads(ln) for ln in daemon.log.read_text().splitlines() if '"config reloaded"' in ln]
        assert reloaded[-1]["changed"] == ["max_running"]
        assert ok(ctl(daemon.home, "status")).strip() == "no jobs"
    finally:
        notify.close()
