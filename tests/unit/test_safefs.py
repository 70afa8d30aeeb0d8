"""safefs: the no-follow operations and the per-thread identity switch, on real files and links."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from supervisor import safefs
from supervisor.contract import read_json, write_json_atomic
from tests.accounts import account, open_dir, root_secret  # noqa: F401 - fixtures


def test_write_json_atomic_replaces_a_link_at_the_plan_and_never_writes_through_its_temp_name(tmp_path,
                                                                                              monkeypatch):
    # A job's user can plant a link at any name in their folder; root writes the plan there.
    # (tests/unit/test_job_folder_links.py does this for every name the writers use, found from the code.)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    plan = tmp_path / "attempt.json"
    plan.symlink_to(victim)
    write_json_atomic(plan, {"job": "x"})
    assert victim.read_text() == "untouched\n"
    assert read_json(plan) == {"job": "x"} and not plan.is_symlink()
    assert oct(plan.stat().st_mode & 0o777) == oct(0o600)  # the job owner's alone (chowned to them)

    made: list[str] = []
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            made.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(safefs.secrets, "token_hex", lambda n=None: "0" * 16)  # the temp name, drawn again
    monkeypatch.setattr(os, "open", open_)
    write_json_atomic(plan, {"job": "y"})
    [temp_name] = made
    (tmp_path / temp_name).symlink_to(victim)
    with pytest.raises(FileExistsError):                      # O_EXCL: refused, not followed
        write_json_atomic(plan, {"job": "z"})
    assert victim.read_text() == "untouched\n" and read_json(plan) == {"job": "y"}


def test_read_json_does_not_follow_links_or_hard_links(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"epoch": 7}')
    (tmp_path / "progress.json").symlink_to(secret)
    assert read_json(tmp_path / "progress.json") is None
    os.link(secret, tmp_path / "exit.json")
    assert read_json(tmp_path / "exit.json") is None
    assert read_json(secret) is None  # it has two links now: not ours alone
    fresh = tmp_path / "fresh.json"
    fresh.write_text('{"epoch": 8}')
    assert read_json(fresh) == {"epoch": 8}


def test_write_atomic_replaces_a_link_instead_of_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "NAME.error").symlink_to(victim)
    safefs.write_atomic(tmp_path / "NAME.error", b"problems\n")
    assert victim.read_text() == "untouched\n"
    assert (tmp_path / "NAME.error").read_text() == "problems\n"


def test_ensure_subdir_moves_a_planted_link_aside(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "rejected").symlink_to(elsewhere)
    with safefs.opened_dir(tmp_path) as top:
        fd = safefs.ensure_subdir(top, "rejected")
        os.close(fd)
    assert (tmp_path / "rejected").is_dir() and not (tmp_path / "rejected").is_symlink()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(".rejected.displaced-")]
    assert aside.is_symlink()  # kept, not deleted, and its target untouched
    assert list(elsewhere.iterdir()) == []


def test_open_regular_refuses_links_fifos_and_hard_links(tmp_path):
    target = tmp_path / "t"
    target.write_text("x")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.read_regular(tmp_path / "link", 10)
    with pytest.raises(safefs.UnsafePath, match="not a regular file"):
        safefs.read_regular(tmp_path / "fifo", 10)
    os.link(target, tmp_path / "hard")
    with pytest.raises(safefs.UnsafePath, match="hard links"):
        safefs.read_regular(tmp_path / "hard", 10)


def test_resolve_inside(tmp_path):
    runs = tmp_path / "runs"
    (runs / "train").mkdir(parents=True)
    (runs / "escape").symlink_to(tmp_path)
    assert safefs.resolve_inside(runs / "train", runs) == (runs / "train").resolve()
    assert safefs.resolve_inside(runs / "escape", runs) is None
    assert safefs.resolve_inside(runs / ".." / "runs2", runs) is None
    assert safefs.resolve_inside("/etc", runs) is None


# -- as root: the per-thread switch to the job's user ------------------------------------------
def test_chown_tree_follows_no_link_and_skips_what_is_not_the_daemons(account, open_dir):  # noqa: F811
    job = open_dir / "job"
    (job / "sub").mkdir(parents=True)
    (job / "own").write_text("daemon's file")
    secret = root_secret(open_dir)
    (job / "x").symlink_to(secret)
    (job / "sub" / "y").symlink_to(open_dir)  # a link to a folder: not walked into
    os.link(secret, job / "hard")             # a hard link to root's file (if the kernel allows it)
    safefs.chown_tree(job, account.uid, account.gid)
    assert os.stat(secret).st_uid == 0 and os.stat(open_dir).st_uid == 0
    assert (job / "own").stat().st_uid == account.uid and (job / "sub").stat().st_uid == account.uid


def test_as_user_checks_every_path_as_the_user_on_this_thread_only(account, open_dir):  # noqa: F811
    secret = root_secret(open_dir)
    shared = open_dir / "dataset"
    shared.write_text("shared through a group\n")
    os.chown(shared, 0, account.extra_gid)
    shared.chmod(0o640)
    link = open_dir / "link"
    link.symlink_to(secret)
    ident = safefs.identity_for(account.uid)
    assert ident.gid == account.gid and account.extra_gid in ident.groups

    mine = open_dir / "mine"
    mine.mkdir()
    os.chown(mine, account.uid, account.gid)
    other_thread: list[str] = []
    go, done = threading.Event(), threading.Event()

    def reader():  # started before the switch, like the socket threads
        go.wait(30)
        other_thread.append(secret.read_text())
        done.set()
    t = threading.Thread(target=reader)
    t.start()
    with safefs.as_user(ident):
        with pytest.raises(PermissionError):
            link.read_text()
        with pytest.raises(PermissionError):
            secret.write_text("overwritten")
        assert shared.read_text() == "shared through a group\n"  # the account's own groups count
        made = mine / "made"
        made.write_text("by the user")
        go.set()
        assert done.wait(30)
    t.join()
    assert (made.stat().st_uid, made.stat().st_gid) == (account.uid, account.gid)
    assert other_thread == ["root only\n"]  # the socket threads stay root meanwhile
    assert secret.read_text() == "root only\n"  # and this thread is root again


def test_identity_for_an_unknown_uid():
    with pytest.raises(safefs.NoSuchUser, match="uid 3999999 has no account"):
        safefs.identity_for(3999999)


def test_the_switch_works_here():
    safefs.check_as_user_works()


# -- as root, a switch that does not work: the daemon refuses to start -------------------------------
def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the start-up check of the identity switch runs only as root")


def test_a_switch_that_changes_nothing_is_refused_at_start(monkeypatch, tmp_path):
    """The calls succeed but the kernel still lets the thread read root's 0600 file (as on a file
    system that ignores permissions): the daemon must not go on to act on job files as root."""
    import contextlib

    from supervisor.daemon.core import Daemon
    from supervisor.paths import Home

    need_root()
    monkeypatch.setattr(safefs, "as_user", lambda identity: contextlib.nullcontext())
    with pytest.raises(OSError, match="has no effect here; refusing to act on job files as root"):
        safefs.check_as_user_works()
    with pytest.raises(OSError, match="has no effect here"):  # main() says so and exits 1 (the test below)
        Daemon(Home(tmp_path / "home"))
    assert not (tmp_path / "home" / "state.db").exists()


# Root without CAP_SETUID/CAP_SETGID (dropped from the bounding set, so the exec'd daemon lacks them):
# setgroups and setfsuid do not take.
WITHOUT_SETUID = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (6, 7):  # CAP_SETGID, CAP_SETUID
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, "-m", "supervisor.daemon.main", *sys.argv[1:]])
"""


def test_a_switch_that_does_not_take_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    need_root()
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-c", WITHOUT_SETUID, "--home", str(home)], capture_output=True,
                          text=True, timeout=60)  # a daemon that started runs until the timeout: a failure
    assert done.returncode == 1, done.stderr
    assert "yolo-supervisord: " in done.stderr and "not permitted" in done.stderr, done.stderr
    assert not (home / "supervisor.sock").exists()
