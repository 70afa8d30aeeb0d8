"""Links planted at every name the code writes in a job's folders: none is written through.

A job's user owns its folders, so they can put a link at any name there, aimed at a file of
someone else's; a root daemon that wrote through it would write that file. The names are not a
list kept here. A first run of each writer, in a clean folder, records every name it creates or
renames (its random temp names included, seen in the ``os`` calls themselves) and every file it
leaves. Then the writer runs again in a fresh folder, twice: once with a link at each final name
(``attempt.json``, ``progress.json``, the vault's seen-file, ...), once with a link at each temp
name, the temp-name draws replayed (``secrets.token_hex`` and tempfile's name sequence give the
same names again). Each link points to a file of its own, which must be left as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from supervisor.child import ddp
from supervisor.child.reporter import Reporter
from supervisor.contract import Plan, read_json, write_json_atomic
from supervisor.daemon.resume import last_pt, prepare_resume
from supervisor.paths import Home
from supervisor.probes.vault import CheckpointVault

JOB = "j"


# -- recording what a writer does --------------------------------------------------------------
class Draws:
    """A random-name source that records its draws and, given earlier ones, hands them out again."""

    def __init__(self, real: Callable[[], str], replay: Optional[list[str]] = None):
        self.real, self.replay, self.drawn = real, list(replay or []), []

    def __call__(self) -> str:
        value = self.replay.pop(0) if self.replay else self.real()
        self.drawn.append(value)
        return value


class NameSequence:
    """Stands in for tempfile's candidate-name iterator (mkstemp draws from it)."""

    def __init__(self, draws: Draws):
        self.draws = draws

    def __iter__(self) -> "NameSequence":
        return self

    def __next__(self) -> str:
        return self.draws()


@dataclass
class Run:
    """What one run of a writer did below ``root``: names made or renamed, files left, draws."""

    root: Path
    touched: set[str] = field(default_factory=set)
    tokens: list[str] = field(default_factory=list)
    temp_names: list[str] = field(default_factory=list)
    error: Optional[BaseException] = None
    before: dict[str, bytes] = field(default_factory=dict)

    def left(self) -> set[str]:
        return set(files(self.root))

    def written(self) -> set[str]:
        """The files it left that are new or changed, written in place or not, or that it renamed into place."""
        after = files(self.root)
        return {n for n, data in after.items() if self.before.get(n) != data} | (self.touched & after.keys())

    def temps(self) -> set[str]:
        """Names it made and then renamed away or removed."""
        return self.touched - self.left()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (b"link" if p.is_symlink() else p.read_bytes())
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _abs(path, dir_fd: Optional[int]) -> str:
    path = os.fsdecode(os.fspath(path))
    if dir_fd is None or os.path.isabs(path):
        return os.path.abspath(path)
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)


def run_recorded(monkeypatch, root: Path, act: Callable[[Path], None],
                 replay: Optional[Run] = None) -> Run:
    """Run ``act(root)`` watching its file system calls and its random temp names."""
    run = Run(root, before=files(root))
    real_open, real_rename, real_replace = os.open, os.rename, os.replace
    base = str(root.resolve())

    def note(path, dir_fd=None):
        full = _abs(path, dir_fd)
        if full.startswith(base + os.sep):
            run.touched.add(os.path.relpath(full, base))

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if flags & os.O_CREAT:
            note(path, dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        note(src, src_dir_fd), note(dst, dst_dir_fd)
        return real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        note(src, src_dir_fd), note(dst, dst_dir_fd)
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    real_token, real_names = secrets.token_hex, tempfile._get_candidate_names()
    tokens = Draws(lambda: real_token(8), replay.tokens if replay else None)
    names = Draws(lambda: next(real_names), replay.temp_names if replay else None)
    with monkeypatch.context() as m:
        m.setattr(os, "open", open_)
        m.setattr(os, "rename", rename)
        m.setattr(os, "replace", replace)
        m.setattr(secrets, "token_hex", lambda n=None: tokens())
        m.setattr(tempfile, "_get_candidate_names", lambda: NameSequence(names))
        try:
            act(root)
        except OSError as err:  # a planted link at a temp name: refusing to write is safe
            run.error = err
    run.tokens, run.temp_names = tokens.drawn, names.drawn
    return run


# -- the writers: each one an operation of the daemon or the child on a job's folders ----------------
def home(root: Path) -> Home:
    return Home(root)


def write_the_plan(root: Path) -> None:
    """The daemon writes attempt.json for the next attempt (core.py: write_json_atomic)."""
    write_json_atomic(home(root).job_plan(JOB), {"job": JOB, "attempt": 2})


def report_progress_and_exit(root: Path) -> None:
    """The child writes progress.json, asks DDP ranks to stop and writes exit.json."""
    h = home(root)
    rep = Reporter(Plan(job=JOB, attempt=2, epochs=3, train={}, progress_file=str(h.job_progress(JOB)),
                        exit_record=str(h.job_exit_record(JOB))))
    rep.beat(force=True, phase="training", epoch=1)
    ddp.request_stop(rep.stop_path)
    rep.exit_record(75)


def prepare_the_next_attempt(root: Path) -> None:
    """The daemon copies last.pt into the vault (its seen-file too) and trims results.csv."""
    run = home(root).job_runs(JOB) / "train"
    vault = CheckpointVault(home(root).job_vault(JOB))
    vault.snapshot(last_pt(run))
    prepare_resume(run, vault, attempt=2)


WRITERS = {"plan": write_the_plan, "progress": report_progress_and_exit, "resume": prepare_the_next_attempt}


@pytest.fixture
def job_folder(request, real_checkpoints) -> Callable[[Path], None]:
    """Sets up a job's folder with what the writers read: a resumable last.pt and a results.csv
    with one row more than it covers."""
    def setup(root: Path) -> None:
        h = home(root)
        h.ensure_job(JOB)
        run = h.job_runs(JOB) / "train"
        (run / "weights").mkdir(parents=True)
        shutil.copyfile(real_checkpoints["resumable1"], last_pt(run))  # 2 epochs done
        (run / "results.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    return setup


@dataclass
class Victim:
    """A file outside the job's folder that a link in it points to, and what it must still hold."""

    path: Path
    holds: bytes


def plant_links(names: set[str], root: Path, outside: Path) -> dict[str, Victim]:
    """A link at each of ``names`` to a file of its own in ``outside``. Where the test set up a file
    under that name (results.csv), the file it points to holds the same bytes: the writer reads the
    same input through the link."""
    victims = {}
    for n, name in enumerate(sorted(names)):
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        holds = f"not {name}\n".encode()
        if link.is_file() and not link.is_symlink():
            holds = link.read_bytes()
            link.unlink()
        victim = Victim(outside / f"victim-{n}", holds)
        victim.path.write_bytes(holds)
        victim.path.chmod(0o600)
        link.symlink_to(victim.path)
        victims[name] = victim
    return victims


def written_through(victims: dict[str, Victim]) -> list[str]:
    """The names whose link target changed (content or mode)."""
    return [name for name, v in victims.items()
            if v.path.read_bytes() != v.holds or (v.path.stat().st_mode & 0o777) != 0o600]


@pytest.fixture
def first_run(tmp_path, monkeypatch, job_folder) -> Callable[[str], Run]:
    def run(writer: str) -> Run:
        root = Path(tempfile.mkdtemp(prefix=f"first-{writer}-", dir=tmp_path))
        job_folder(root)
        done = run_recorded(monkeypatch, root, WRITERS[writer])
        assert done.error is None, done.error
        return done
    return run


def fresh(tmp_path: Path, job_folder) -> tuple[Path, Path]:
    """A job folder set up like the first run's, and a folder outside it for the link targets."""
    top = Path(tempfile.mkdtemp(prefix="again-", dir=tmp_path))
    (top / "outside").mkdir()
    job_folder(top / "job")
    return top / "job", top / "outside"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_link_at_a_final_name_is_replaced_not_written_through(writer, tmp_path, monkeypatch, job_folder,
                                                                first_run):
    first = first_run(writer)
    finals = first.written()
    assert finals, f"{writer} wrote nothing?"
    root, outside = fresh(tmp_path, job_folder)
    victims = plant_links(finals, root, outside)
    again = run_recorded(monkeypatch, root, WRITERS[writer])
    assert again.error is None, again.error
    assert written_through(victims) == []
    rewritten = again.written()
    for name in finals & rewritten:
        assert (root / name).is_file() and not (root / name).is_symlink(), f"{name} is still a link"
    # A name not written again: a vault copy's, which the vault reads as a copy it holds (none newer is
    # taken, a loss to the job's own user only); the link stays, its target untouched.
    assert {Path(n).parent for n in finals - rewritten} <= {home(Path(".")).job_vault(JOB)}, finals - rewritten


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_link_at_a_temp_name_is_never_written_through(writer, tmp_path, monkeypatch, job_folder, first_run):
    first = first_run(writer)
    temps = first.temps()
    assert temps, f"{writer} made no temp file?"
    for name in sorted(temps):                         # one at a time: a refused write ends the run
        root, outside = fresh(tmp_path, job_folder)
        victims = plant_links({name}, root, outside)
        again = run_recorded(monkeypatch, root, WRITERS[writer], replay=first)
        assert name in again.touched, f"the replayed draws did not reach {name}"
        assert written_through(victims) == [], name
        # O_EXCL on the temp name: the write is refused (FileExistsError) or another name is drawn
        assert again.error is None or isinstance(again.error, FileExistsError), again.error
        assert (root / name).is_symlink()              # the planted link is left as it was


def test_the_plan_and_progress_files_are_the_ones_the_daemon_reads(first_run):
    """The names come from the code: these are the paths the daemon and the child agree on."""
    h = home(Path("."))
    plan = first_run("plan")
    assert str(h.job_plan(JOB)) in plan.left()
    assert read_json(plan.root / h.job_plan(JOB)) == {"job": JOB, "attempt": 2}
    progress = first_run("progress").left()
    assert {str(h.job_progress(JOB)), str(h.job_exit_record(JOB))} <= progress
