"""The service install, for real: scripts/install.sh as an admin runs it, then the daemon started
exactly as the installed unit says, used by an operator through the installed yolo-supervisorctl.

systemd cannot run as PID 1 on the CI machines, so the test plays its part: it parses the
installed unit and runs its ExecStart as its User=/Group= (with that user's supplementary
groups), with its Environment= and UMask=, in /, in a new session, with a NOTIFY_SOCKET it
listens on (a real AF_UNIX datagram socket with SO_PASSCRED, so NotifyAccess=main is checked:
READY=1 and WATCHDOG=1 must come from the main process) and WATCHDOG_USEC from WatchdogSec=.
A "service restart" is what systemd does with KillMode=process: SIGTERM to the main process
only, then ExecStart again.

Throwaway users and groups are created for the test and removed afterwards; the training is a
real (tiny) CPU YOLO training run by the service user from the installed virtual environment.
Needs root; skipped elsewhere.
"""

from __future__ import annotations

import array
import grp
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from supervisor.demo import make_dataset
from tests.accounts import SYSTEM_PYTHON
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(os.geteuid() != 0, reason="the install test creates users and installs a service: needs root"),
    pytest.mark.skipif(shutil.which("useradd") is None or shutil.which("runuser") is None,
                       reason="needs useradd and runuser (passwd, util-linux)"),
]


# -- the unit file, read the way systemd reads it (the parts this test uses) ---------------------------
def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (Environment= may repeat); comments and
    continuation lines handled."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(values: list[str]) -> dict[str, str]:
    env = {}
    for value in values:
        for assignment in shlex.split(value):
            k, _, v = assignment.partition("=")
            env[k] = v
    return env


def seconds(value: str) -> float:
    value = value.strip()
    for suffix, factor in (("min", 60), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


class NotifySocket:
    """systemd's end of sd_notify: datagrams with the sender's credentials."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # like /run/systemd/notify: any service user may send
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, int, dict[str, str]]] = []  # (pid, uid, fields)

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (socket.timeout, BlockingIOError):
            return
        pid = uid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _ = struct.unpack("iii", payload[:12])
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((pid, uid, fields))

    def wait(self, key: str, value: str, pid: int, timeout: float) -> tuple[int, int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.messages:
                if msg[2].get(key) == value and msg[0] == pid:
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} from pid {pid} within {timeout}s; got {self.messages}")
            self._receive(min(left, 1.0))

    def close(self) -> None:
        self.sock.close()


class Service:
    """What systemd would do with the installed unit (without being PID 1)."""

    def __init__(self, unit: Path, notify: NotifySocket, log: Path, extra_env: dict[str, str] | None = None):
        self.unit, self.notify, self.log, self.extra_env = unit, notify, log, extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        svc = parse_unit(self.unit)["Service"]
        argv = shlex.split(svc["ExecStart"][-1])
        user = pwd.getpwnam(svc["User"][-1])
        group = grp.getgrnam(svc["Group"][-1])
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell,
            "LANG": "C.UTF-8", "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": str(int(seconds(svc["WatchdogSec"][-1]) * 1e6)),
            **unit_environment(svc.get("Environment", [])), **self.extra_env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, user=user.pw_uid, group=group.gr_gid,
                extra_groups=[g for g in os.getgrouplist(user.pw_name, group.gr_gid)],
                umask=int(svc["UMask"][-1], 8), env=env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.timeout_start = seconds(svc.get("TimeoutStartSec", ["90"])[-1])
        self.timeout_stop = seconds(svc.get("TimeoutStopSec", ["90"])[-1])
        assert svc["KillMode"] == ["process"]
        return self.proc.pid

    def stop(self) -> None:
        """KillMode=process: SIGTERM to the main process only; SIGKILL after TimeoutStopSec."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.timeout_stop)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not stop within TimeoutStopSec={self.timeout_stop}s")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


# -- users and running things as them ----------------------------------------------------------------
def as_user(user: str, *cmd: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], input=input, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if uid is not None:  # every process of this throwaway user was started by this test
        procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        subprocess.run(["userdel", name], capture_output=True)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], capture_output=True)
    except KeyError:
        pass


@pytest.fixture
def sandbox():
    """A world-traversable scratch directory (pytest's tmp_path is 0700: the service user
    could not reach a venv in it) and three throwaway users: the service, an operator, and a
    user outside the service group."""
    tag = uuid.uuid4().hex[:6]
    users = {"service": f"ystsvc{tag}", "operator": f"ystop{tag}", "outsider": f"ystout{tag}"}
    root = Path(tempfile.mkdtemp(prefix="ys-install-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        for who in ("operator", "outsider"):
            subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh",
                            users[who]], check=True, capture_output=True)
        yield root, users
    finally:
        for name in users.values():
            remove_user(name)
        shutil.rmtree(root, ignore_errors=True)


def ctl(user: str, ctl_bin: Path, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return as_user(user, str(ctl_bin), "--home", str(home), *args, timeout=timeout)


def job_status(user: str, ctl_bin: Path, home: Path, name: str) -> dict:
    done = ctl(user, ctl_bin, home, "status", "--json", name)
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)
    return jobs[0] if isinstance(jobs, list) else jobs[name]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_run_as_the_unit_operate_and_upgrade(sandbox):
    root, users = sandbox
    # Unique: daemons find a job's processes machine-wide by its name (other tests may run at once).
    name = f"installed-{users['service'][-6:]}"
    svc, op, outsider = users["service"], users["operator"], users["outsider"]
    prefix, home, unit_dir, bin_dir = root / "opt", root / "state", root / "unit", root / "bin"
    args = [str(INSTALL), "--prefix", str(prefix), "--home", str(home), "--no-start", "--operator", op,
            "--user", svc, "--unit-dir", str(unit_dir), "--bin-dir", str(bin_dir)]
    # An admin's environment: the pyenv interpreter first on PATH is root's own (not usable by
    # the service user); install.sh must pick a system Python or say it cannot.
    t0 = time.monotonic()
    first = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    install_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    print(f"\nfirst install took {install_s:.0f} s")

    # A Python the service user cannot run is refused with a reason: a copy of the system one in a
    # folder closed to other users (as a pyenv under /root is on this project's machines).
    closed = Path(tempfile.mkdtemp(prefix="ys-private-python-"))  # 0700, root's
    try:
        private = closed / "python3"
        shutil.copy2(os.path.realpath(SYSTEM_PYTHON), private)
        assert subprocess.run([str(private), "-c", "import venv, ensurepip"]).returncode == 0  # root can
        assert as_user(svc, str(private), "-c", "").returncode != 0                            # svc cannot
        refused = subprocess.run([*args, "--dry-run", "--python", str(private)], capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1 and f"{svc} cannot run it" in refused.stdout, refused
        assert "--python" in refused.stderr, refused.stderr
    finally:
        shutil.rmtree(closed, ignore_errors=True)

    unit = unit_dir / "yolo-supervisor.service"
    ctl_bin = bin_dir / "yolo-supervisorctl"
    service_unit = parse_unit(unit)["Service"]
    assert service_unit["User"] == [svc] and service_unit["Group"] == [svc]
    assert service_unit["ExecStart"] == [f"{prefix}/bin/yolo-supervisord --home {home}"]
    assert "StateDirectory" not in service_unit and service_unit["ReadWritePaths"] == [str(home)]
    doc = parse_unit(unit)["Unit"]["Documentation"][-1]
    assert doc.startswith("file://") and Path(doc[len("file://"):]).is_file(), doc
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        about = [ln for ln in (verify.stdout + verify.stderr).splitlines() if unit.name in ln or str(prefix) in ln]
        assert verify.returncode == 0 and not about, verify.stdout + verify.stderr

    # What the README promises about the state directory.
    svc_pw = pwd.getpwnam(svc)
    assert (home.stat().st_uid, home.stat().st_gid) == (svc_pw.pw_uid, grp.getgrnam(svc).gr_gid)
    assert mode(home) == 0o750, oct(mode(home))
    assert mode(home / "inbox") == 0o3770, oct(mode(home / "inbox"))
    config = yaml.safe_load((home / "config.yaml").read_text())
    assert config["socket_group"] == svc and mode(home / "config.yaml") == 0o640
    assert op in grp.getgrnam(svc).gr_mem and outsider not in grp.getgrnam(svc).gr_mem
    assert ctl_bin.resolve() == (prefix / "bin" / "yolo-supervisorctl").resolve()
    # The venv's interpreter is one the service user can run, and it trains: torch and
    # ultralytics import as that user.
    base = os.path.realpath(prefix / "bin" / "python")
    assert not base.startswith("/root/"), base
    imports = as_user(svc, str(prefix / "bin" / "python"), "-c",
                      "import torch, ultralytics, supervisor.daemon.main; print(torch.__version__, ultralytics.__version__)")
    assert imports.returncode == 0, imports.stderr[-2000:]

    data = make_dataset(root / "data", images=16, size=64)
    notify = NotifySocket(root / "notify.sock")
    service = Service(unit, notify, root / "daemon.log")
    try:
        # -- the daemon, as the unit starts it ----------------------------------------------------
        pid = service.start()
        notify.wait("READY", "1", pid, service.timeout_start)
        notify.wait("WATCHDOG", "1", pid, 30)
        sock = home / "supervisor.sock"
        assert sock.is_socket() and mode(sock) == 0o660, oct(mode(sock))
        assert sock.stat().st_gid == grp.getgrnam(svc).gr_gid and sock.stat().st_uid == svc_pw.pw_uid
        daemon_proc = psutil.Process(pid)
        assert daemon_proc.uids().real == svc_pw.pw_uid and daemon_proc.gids().real == grp.getgrnam(svc).gr_gid

        # -- an operator drops a job file and drives it with the installed CLI ----------------------
        job = {"name": name, "train": {
            "model": "yolov8n.yaml", "data": str(data), "epochs": 300, "imgsz": 64, "batch": 8, "workers": 0,
            "device": "cpu", "plots": False, "amp": False, "val": False},
            "restart": {"backoff": {"initial": 0.5, "max": 2, "factor": 2}}}
        inbox = home / "inbox"
        dropped = as_user(op, "sh", "-c", f'cat > {inbox}/.{name}.tmp && mv {inbox}/.{name}.tmp {inbox}/{name}.yaml',
                          input=yaml.safe_dump(job))
        assert dropped.returncode == 0, dropped.stderr
        st = wait_for(lambda: (lambda s: s if s["state"] == "running" and (s.get("epochs_done") or 0) >= 1 else None)(
            job_status(op, ctl_bin, home, name)), 300, interval=1, what="the job running, one epoch saved")
        train_pid = st["pid"]
        assert psutil.Process(train_pid).uids().real == svc_pw.pw_uid  # a service daemon runs jobs as itself
        plain = ctl(op, ctl_bin, home, "status")
        assert plain.returncode == 0 and name in plain.stdout and "running" in plain.stdout, plain

        # -- a user outside the group --------------------------------------------------------------
        for command in (["status"], ["stop", name]):
            refused = ctl(outsider, ctl_bin, home, *command)
            assert refused.returncode == 6, (command, refused.returncode, refused.stderr)
        # ... even with connect permission granted (a wider mode, as the README describes for
        # read access): it reads, it cannot change anything.
        os.chmod(home, 0o751)
        os.chmod(sock, 0o666)
        try:
            assert ctl(outsider, ctl_bin, home, "status").returncode == 0
            for command in (["stop", name], ["restart", name], ["remove", name]):
                refused = ctl(outsider, ctl_bin, home, *command)
                assert refused.returncode == 6 and "permission" in refused.stderr.lower(), (command, refused)
            assert job_status(op, ctl_bin, home, name)["pid"] == train_pid
        finally:
            os.chmod(home, 0o750)
            os.chmod(sock, 0o660)

        # -- the upgrade: install again, restart the service; config, state and training survive ---
        with open(home / "config.yaml", "a") as f:
            f.write("\n# an admin's edit, kept by upgrades\n")
        config_before = (home / "config.yaml").read_text()
        attempts_before = job_status(op, ctl_bin, home, name)["attempts"]
        t0 = time.monotonic()
        second = subprocess.run(args, capture_output=True, text=True, timeout=1200)
        upgrade_s = time.monotonic() - t0
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "keeping" in second.stdout and (home / "config.yaml").read_text() == config_before
        print(f"upgrade install took {upgrade_s:.0f} s")
        assert mode(home) == 0o750 and mode(home / "inbox") == 0o3770

        service.stop()  # systemctl restart, step 1: only the daemon goes (KillMode=process)
        assert psutil.pid_exists(train_pid) and psutil.Process(train_pid).status() != psutil.STATUS_ZOMBIE
        notify.messages.clear()
        pid = service.start()
        notify.wait("READY", "1", pid, service.timeout_start)
        notify.wait("WATCHDOG", "1", pid, 30)
        st = job_status(op, ctl_bin, home, name)
        assert st["state"] == "running" and st["pid"] == train_pid, st  # re-adopted, not restarted
        assert st["attempts"] == attempts_before, st
        epochs = st["epochs_done"]
        wait_for(lambda: job_status(op, ctl_bin, home, name)["epochs_done"] > epochs, 300, interval=1,
                 what="training progressing under the new daemon")

        # -- systemctl reload: the unit's ExecReload, as its user, with $MAINPID -----------------------
        notify.messages.clear()
        reload_cmd = [a.replace("$MAINPID", str(pid)) for a in shlex.split(service_unit["ExecReload"][-1])]
        reloaded = as_user(svc, *reload_cmd)
        assert reloaded.returncode == 0, reloaded.stderr
        notify.wait("RELOADING", "1", pid, 30)
        notify.wait("READY", "1", pid, 30)
        wait_for(lambda: "config reloaded" in service.tail(), 30, what="the daemon's 'config reloaded' line")
        assert job_status(op, ctl_bin, home, name)["pid"] == train_pid

        # -- stop and start as the operator: a resumable save, then a real resume ------------------
        stopped = ctl(op, ctl_bin, home, "stop", "--wait", name, timeout=300)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: job_status(op, ctl_bin, home, name)["state"] == "stopped", 120, interval=0.5,
                 what="the job stopped")
        # Gone, or dead and waiting to be reaped: after the restart the training is no child of the
        # daemon's, so whoever inherited it (init, or a subreaper above the test) reaps it.
        wait_for(lambda: dead(train_pid), 60, what="the training process gone")
        started = ctl(op, ctl_bin, home, "start", name)
        assert started.returncode == 0, started.stderr
        st = wait_for(lambda: (lambda s: s if s["state"] == "running" and s["pid"] != train_pid else None)(
            job_status(op, ctl_bin, home, name)), 300, interval=1, what="the job running again")
        history = ctl(op, ctl_bin, home, "history", "--json", name)
        assert history.returncode == 0, history.stderr
        attempts = json.loads(history.stdout)["attempts"]
        assert attempts[-1].get("resumed_from"), attempts[-1]  # resumed, not started fresh
        causes = [a["cause"] for a in attempts[:-1]]
        assert "preempted" in causes or "stopped" in causes, causes
        events = json.dumps(json.loads(history.stdout)["events"])
        assert f"({op})" in events, events[-2000:]  # who did what is recorded by name
        assert ctl(op, ctl_bin, home, "stop", "--wait", name, timeout=300).returncode == 0
    except BaseException:
        print("daemon log:\n" + service.tail())
        raise
    finally:
        service.stop()
        notify.close()


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
