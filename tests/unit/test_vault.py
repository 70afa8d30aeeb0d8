"""The checkpoint vault with real checkpoints: snapshot, mid-write copies, pruning, restore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from supervisor.probes import vault as vault_mod
from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint
from supervisor.probes.vault import CheckpointVault
from tests.unit.test_checkpoint import flip_byte_in_record, tensor_records, truncated, with_epoch


@pytest.fixture
def copies(monkeypatch):
    """Counts the vault's copies of a source into its directory (each one is 30 MB of I/O)."""
    calls = []
    real = shutil.copyfile

    def counting(src, dst, *a, **kw):
        if Path(dst).parent.name == "vault":   # shutil is one module: ignore the tests' own copies
            calls.append(Path(src))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(vault_mod.shutil, "copyfile", counting)
    return calls


def kept(vdir: Path) -> list[str]:
    return sorted(p.name for p in vdir.iterdir() if p.name.startswith("epoch-"))


def no_temp_files(vdir: Path) -> bool:
    return not [p for p in vdir.iterdir() if p.name.startswith(".incoming-")]


def test_snapshot_keeps_a_verified_copy_once(real_checkpoints, tmp_path, copies):
    src = tmp_path / "last.pt"
    shutil.copyfile(real_checkpoints["resumable1"], src)
    v = CheckpointVault(tmp_path / "vault")

    info = v.snapshot(src)
    assert info is not None and info.is_resumable and info.epoch == 1
    assert info.path == tmp_path / "vault" / "epoch-00001.pt"
    assert info.path.read_bytes() == src.read_bytes()
    # unchanged source: no second 30 MB copy, also through a new vault object (the daemon makes one per call)
    assert v.snapshot(src) is None
    assert CheckpointVault(tmp_path / "vault").snapshot(src) is None
    assert len(copies) == 1
    assert no_temp_files(tmp_path / "vault")


def test_truncated_source_is_discarded_and_retried(real_checkpoints, tmp_path, copies):
    good = real_checkpoints["resumable1"]
    src = truncated(good, tmp_path / "last.pt", good.stat().st_size // 2)
    v = CheckpointVault(tmp_path / "vault")

    assert v.snapshot(src) is None
    assert v.snapshot(src) is None          # same stat, but a corrupt copy was not "seen": it copies again
    assert len(copies) == 2
    assert kept(tmp_path / "vault") == [] and no_temp_files(tmp_path / "vault")

    src.write_bytes(good.read_bytes())      # the writer finishes
    info = v.snapshot(src)
    assert info is not None and info.epoch == 1
    assert kept(tmp_path / "vault") == ["epoch-00001.pt"]


def test_copy_taken_mid_write_is_discarded_and_retried(real_checkpoints, tmp_path, monkeypatch):
    """The source looks complete at stat time but is being rewritten while copied: the copy is what counts."""
    src = tmp_path / "last.pt"
    shutil.copyfile(real_checkpoints["resumable0"], src)
    real = shutil.copyfile
    calls = []

    def racing(s, d, *a, **kw):
        if Path(d).parent.name == "vault":
            calls.append(s)
        if len(calls) == 1 and Path(d).parent.name == "vault":  # first copy sees a half-written file
            Path(d).write_bytes(Path(s).read_bytes()[: Path(s).stat().st_size // 2])
            return d
        return real(s, d, *a, **kw)

    monkeypatch.setattr(vault_mod.shutil, "copyfile", racing)
    v = CheckpointVault(tmp_path / "vault")
    assert v.snapshot(src) is None
    info = v.snapshot(src)
    assert info is not None and info.epoch == 0 and inspect_checkpoint(info.path).is_resumable


def test_finished_and_older_checkpoints_are_not_kept(real_checkpoints, tmp_path, copies):
    v = CheckpointVault(tmp_path / "vault")
    src = tmp_path / "last.pt"
    shutil.copyfile(real_checkpoints["resumable1"], src)
    assert v.snapshot(src).epoch == 1

    shutil.copyfile(real_checkpoints["resumable0"], tmp_path / "older.pt")
    assert v.snapshot(tmp_path / "older.pt") is None
    shutil.copyfile(real_checkpoints["finished"], tmp_path / "done.pt")
    assert v.snapshot(tmp_path / "done.pt") is None
    assert v.snapshot(tmp_path / "done.pt") is None   # remembered: not copied again
    assert len(copies) == 3
    assert kept(tmp_path / "vault") == ["epoch-00001.pt"] and no_temp_files(tmp_path / "vault")


def test_prunes_to_keep_newest(real_checkpoints, tmp_path):
    v = CheckpointVault(tmp_path / "vault", keep=2)
    src = tmp_path / "last.pt"
    for epoch in (0, 1, 2, 3):
        with_epoch(real_checkpoints["resumable0"], tmp_path / "next.pt", epoch)
        (tmp_path / "next.pt").replace(src)   # like a new save: new inode, new stat
        assert v.snapshot(src).epoch == epoch
    assert kept(tmp_path / "vault") == ["epoch-00002.pt", "epoch-00003.pt"]
    assert [c.epoch for c in v.copies()] == [3, 2]
    assert v.newest().epoch == 3


def test_newest_skips_a_damaged_copy(real_checkpoints, tmp_path):
    vdir = tmp_path / "vault"
    v = CheckpointVault(vdir)
    for key in ("resumable0", "resumable1"):
        shutil.copyfile(real_checkpoints[key], tmp_path / f"{key}.pt")
        assert v.snapshot(tmp_path / f"{key}.pt") is not None
    newest = vdir / "epoch-00001.pt"
    flip_byte_in_record(newest, newest, tensor_records(newest)[5])   # bit rot in the vault itself

    assert v.newest().epoch == 0
    assert [c.kind for c in v.copies()] == [CkptKind.CORRUPT, CkptKind.RESUMABLE]


def test_restore_to_puts_aside_a_corrupt_destination(real_checkpoints, tmp_path):
    good = real_checkpoints["resumable1"]
    v = CheckpointVault(tmp_path / "vault")
    shutil.copyfile(good, tmp_path / "src.pt")
    assert v.snapshot(tmp_path / "src.pt") is not None

    weights = tmp_path / "run" / "weights"
    weights.mkdir(parents=True)
    dest = truncated(good, weights / "last.pt", 1000)
    info = v.restore_to(dest)

    assert info is not None and info.epoch == 1 and info.path == dest
    assert dest.read_bytes() == good.read_bytes()
    assert inspect_checkpoint(dest).is_resumable
    aside = [p for p in weights.iterdir() if p.name.startswith("last.pt.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == good.read_bytes()[:1000]
    assert sorted(p.name for p in weights.iterdir()) == sorted(["last.pt", aside[0].name])  # no temp left


def test_restore_to_missing_destination_and_empty_vault(real_checkpoints, tmp_path):
    v = CheckpointVault(tmp_path / "vault")
    dest = tmp_path / "run" / "weights" / "last.pt"
    assert v.restore_to(dest) is None and not dest.exists()

    shutil.copyfile(real_checkpoints["resumable0"], tmp_path / "src.pt")
    v.snapshot(tmp_path / "src.pt")
    info = v.restore_to(dest)
    assert info.epoch == 0 and inspect_checkpoint(dest).is_resumable
    assert dest.stat().st_mode & 0o644 == 0o644   # readable by the training user, not the temp file's 0600


def test_seen_file_is_never_written_through_a_planted_link(real_checkpoints, tmp_path):
    # The vault lives in the job's folder, which its user owns: a link at the seen-file must not
    # aim a root daemon's write at another file (the temp names: tests/unit/test_job_folder_links.py).
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    vdir = tmp_path / "vault"
    vault = CheckpointVault(vdir, keep=2)
    src = tmp_path / "last.pt"
    shutil.copyfile(real_checkpoints["resumable1"], src)
    seen = vault._seen_file(src)                               # the name the code uses
    seen.symlink_to(victim)
    assert vault.snapshot(src) is not None
    assert victim.read_text() == "untouched\n"
    assert not seen.is_symlink() and seen.read_text().split()[-1] == "epoch-00001.pt"
