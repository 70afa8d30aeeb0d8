"""A root daemon cannot be turned against its host by the user a job runs as (issue 10, security).

Real root daemon, real Unix socket, a job dropped into the inbox by a throwaway account and
run as that account (the test-only fake trainer, on the system python: root's own python is
out of the account's reach), then the attacks of the issue, each with real links and real
signals: links in the job folder, a replaced log, a forged run directory, group identity.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from supervisor.control.protocol import Request, connect
from tests.accounts import SYSTEM_PYTHON, Account, account, open_dir, root_secret  # noqa: F401 - fixtures
from tests.conftest import (FAKE_DATA, FAKE_TRAINER, DaemonProcess, ctl, kill_job_processes, settle, wait_for,
                            wait_socket)


@pytest.fixture
def root_daemon(open_dir, monkeypatch):  # noqa: F811
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a job as another user")
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    monkeypatch.setenv("YOLO_SUPERVISOR_CHILD_PYTHON", SYSTEM_PYTHON)
    d = DaemonProcess(open_dir / "home")
    d.start()
    wait_socket(d)
    yield d
    d.stop()
    for job in (d.home / "jobs").glob("*"):
        kill_job_processes(job.name)


def drop_as(daemon: DaemonProcess, acct: Account, name: str, group: int = 0, max_restarts: int = 5) -> None:
    """The account drops a job file; its group is one the account is not in (a setgid inbox does that)."""
    inbox = daemon.home / "inbox"
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(json.dumps({"name": name, "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA),
                                                        "epochs": 2, "device": "cpu"},
                               "restart": {"max_restarts": max_restarts,
                                           "backoff": {"initial": 0.2, "max": 1, "factor": 2}}}))
    os.chown(tmp, acct.uid, group)
    tmp.rename(inbox / f"{name}.yaml")


def running_attempt(daemon: DaemonProcess, name: str, number: int):
    def check():
        job = daemon.wait_state(name, {"running", "starting", "backoff", "failed"}, timeout=60)
        assert job.state != "failed", job.state_reason
        return job if job.state == "running" and job.attempts == number and job.pid else None
    return wait_for(check, 60, what=f"{name} running attempt {number}")


def proc_ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def kill_child(daemon: DaemonProcess, name: str) -> None:
    """What the job's user may always do: kill their own training."""
    os.kill(daemon.job(name).pid, signal.SIGKILL)


def request(daemon: DaemonProcess, cmd: str, **args):
    with connect(daemon.home / "supervisor.sock") as conn:
        return conn.request(Request(cmd, args))


def test_job_runs_with_its_owners_own_groups_not_the_files(root_daemon, account):  # noqa: F811
    drop_as(root_daemon, account, "groups", group=0)  # the file's group is root's
    job = running_attempt(root_daemon, "groups", 1)
    ids = proc_ids(job.pid)
    assert ids["Uid"][:2] == [account.uid, account.uid]
    assert ids["Gid"][:2] == [account.gid, account.gid], "runs with the account's group, not the file's"
    assert account.extra_gid in ids["Groups"], "the account's supplementary groups (datasets, video) are kept"
    assert 0 not in ids["Groups"]
    assert (job.owner_uid, job.owner_gid) == (account.uid, account.gid)


def test_links_in_the_job_folder_are_not_followed_on_relaunch(root_daemon, account, open_dir):  # noqa: F811
    drop_as(root_daemon, account, "links")
    running_attempt(root_daemon, "links", 1)
    job_dir = root_daemon.home / "jobs" / "links"
    secret = root_secret(open_dir)
    (job_dir / "x").symlink_to(secret)            # chowned to the user on the next launch, before
    # A link at every file the first attempt left in the job's folder (the plan attempt.json, progress.json,
    # ...: the names as the code wrote them, not a list kept here), each to a root file of its own.
    written = sorted(p for p in job_dir.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "train.log")
    assert job_dir / "attempt.json" in written
    targets = {}
    for n, path in enumerate(written):
        targets[path] = root_secret(open_dir, f"target-{n}")
        path.unlink()
        path.symlink_to(targets[path])
    log_secret = root_secret(open_dir, "log-target")
    (job_dir / "train.log").unlink()
    (job_dir / "train.log").symlink_to(log_secret)  # the next attempt's banner went there

    kill_child(root_daemon, "links")
    running_attempt(root_daemon, "links", 2)
    for f in (secret, log_secret, *targets.values()):
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (0, 0), f"{f.name} was chowned"
        assert f.read_text() == "root only\n", f"written through a link: {f.name}"
    plan = job_dir / "attempt.json"                # written again for attempt 2: the link was replaced
    assert not plan.is_symlink() and json.loads(plan.read_text())["attempt"] == 2
    log = job_dir / "train.log"
    assert not log.is_symlink() and "attempt 2 of job links" in log.read_text()
    assert log.stat().st_uid == account.uid
    assert [p for p in job_dir.iterdir() if p.name.startswith("train.log.not-a-log-")]  # kept aside


def test_tail_does_not_read_through_a_link_in_the_job_folder(root_daemon, account, open_dir):  # noqa: F811
    drop_as(root_daemon, account, "tail")
    running_attempt(root_daemon, "tail", 1)
    secret = root_secret(open_dir, text="the root password\n")
    log = root_daemon.home / "jobs" / "tail" / "train.log"
    log.unlink()
    log.symlink_to(secret)
    done = ctl(root_daemon.home, "tail", "tail")
    assert "the root password" not in done.stdout + done.stderr
    assert done.returncode == 1 and "not read" in done.stderr and "link" in done.stderr
    assert "tail" in ctl(root_daemon.home, "status").stdout  # and the daemon keeps serving


def test_a_run_directory_reported_outside_the_job_is_not_believed(root_daemon, account, open_dir):  # noqa: F811
    other = open_dir / "other-user" / "run"
    other.mkdir(parents=True)
    root_secret(other, "results.csv", "epoch,metrics/mAP50(B)\n1,0.99\n")
    drop_as(root_daemon, account, "forged", max_restarts=0)  # no relaunch: the forged dir would stay
    job = running_attempt(root_daemon, "forged", 1)
    progress = root_daemon.home / "jobs" / "forged" / "progress.json"
    os.kill(job.pid, signal.SIGSTOP)  # the user pauses their own child and writes its report
    data = json.loads(progress.read_text())
    data["save_dir"] = str(other)
    progress.write_text(json.dumps(data))
    os.kill(job.pid, signal.SIGKILL)
    job = root_daemon.wait_state("forged", "failed", timeout=60)
    assert job.run_dir is None
    assert any(e.kind == "refused" and str(other) in e.reason for e in root_daemon.events("forged"))
    answer = request(root_daemon, "results", name="forged").unwrap()
    assert answer["csv"] is None and answer["run_dir"] is None


def test_results_read_as_the_jobs_user(root_daemon, account, open_dir):  # noqa: F811
    drop_as(root_daemon, account, "res")
    job = running_attempt(root_daemon, "res", 1)
    run_dir = root_daemon.home / "jobs" / "res" / "runs" / "train"
    run_dir.mkdir(parents=True)
    os.chown(run_dir, account.uid, account.gid)
    progress = root_daemon.home / "jobs" / "res" / "progress.json"
    os.kill(job.pid, signal.SIGSTOP)
    data = json.loads(progress.read_text())
    data["save_dir"] = str(run_dir)  # inside the job's runs folder: believed
    progress.write_text(json.dumps(data))
    os.kill(job.pid, signal.SIGKILL)
    wait_for(lambda: root_daemon.job("res").run_dir == str(run_dir.resolve()), 60, what="run_dir taken")
    secret = root_secret(open_dir, "other.csv", "epoch,metrics/mAP50(B)\n1,0.42\n")
    (run_dir / "results.csv").symlink_to(secret)
    answer = request(root_daemon, "results", name="res")
    assert answer.ok is False and "0.42" not in json.dumps(answer.to_wire())


def test_checkpoint_copies_are_taken_as_the_jobs_user(account, open_dir, real_checkpoints):  # noqa: F811
    """In process (the account cannot run root's python, so no real training as it): the vault's
    snapshot reads the run directory as the job's user, and keeps what it copies as theirs."""
    import shutil

    from supervisor import safefs
    from supervisor.daemon.core import Daemon
    from supervisor.paths import Home

    d = Daemon(Home(open_dir / "inproc"))
    try:
        spec = json.dumps({"name": "v", "train": {"model": "yolov8n.yaml", "data": "/x.yaml", "epochs": 3}})
        d.store.add_job("v", spec, "running", owner_uid=account.uid, owner_gid=account.gid)
        job_dir = d.home.ensure_job("v")
        weights = d.home.job_runs("v") / "train" / "weights"
        weights.mkdir(parents=True)
        safefs.chown_tree(job_dir, account.uid, account.gid)
        d.store.update_job("v", run_dir=str(weights.parent))
        theirs = open_dir / "other-users-last.pt"  # another user's checkpoint: root may read it, they may not
        shutil.copyfile(real_checkpoints["resumable1"], theirs)
        theirs.chmod(0o600)
        (weights / "last.pt").symlink_to(theirs)
        d.attempts.snapshot("v")
        settle(d)  # the copy runs on a worker
        vault = d.home.job_vault("v")
        assert not [p for p in vault.iterdir() if p.name.startswith("epoch-")], "copied through the link"

        (weights / "last.pt").unlink()
        shutil.copyfile(real_checkpoints["resumable1"], weights / "last.pt")
        os.chown(weights / "last.pt", account.uid, account.gid)
        d.attempts.snapshot_retry_at.clear()
        d.attempts.snapshot("v")
        settle(d)
        [copy] = [p for p in vault.iterdir() if p.name.startswith("epoch-")]
        assert copy.stat().st_uid == account.uid  # made as the user: theirs, no chown needed
    finally:
        d.store.close()
