"""A state saved from non-finite weights (the child says so at save) is never vaulted nor resumed from."""

from __future__ import annotations

import shutil
from pathlib import Path

from supervisor.daemon.resume import choose, prepare_resume
from supervisor.contract import FINITE_KEY
from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint
from supervisor.probes.vault import CheckpointVault
from tests.unit.test_vault import copies  # noqa: F401 - the fixture


def marked(src: Path, dst: Path, finite: bool) -> Path:
    """``src`` (a real Ultralytics checkpoint) with the child's finiteness mark."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt[FINITE_KEY] = finite
    torch.save(ckpt, dst)
    return dst


def test_a_state_saved_from_nan_weights_is_diverged_and_not_resumable(real_checkpoints, tmp_path):
    diverged = inspect_checkpoint(marked(real_checkpoints["resumable1"], tmp_path / "d.pt", False))
    assert diverged.kind is CkptKind.DIVERGED and not diverged.is_resumable
    assert "NaN/Inf" in diverged.problem
    assert inspect_checkpoint(marked(real_checkpoints["resumable1"], tmp_path / "f.pt", True)).is_resumable


def test_the_vault_keeps_no_copy_of_it_and_reads_it_once(real_checkpoints, tmp_path, copies):  # noqa: F811
    vault = CheckpointVault(tmp_path / "vault")
    src = marked(real_checkpoints["resumable1"], tmp_path / "last.pt", False)
    assert vault.snapshot(src) is None and vault.newest() is None
    assert vault.snapshot(src) is None
    assert len(copies) == 1  # not copied again at every tick: it is whole, only not usable


def test_a_resume_takes_the_newest_finite_state(real_checkpoints, tmp_path):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    vault = CheckpointVault(tmp_path / "vault")
    shutil.copyfile(real_checkpoints["resumable0"], run / "weights" / "last.pt")
    vault.snapshot(run / "weights" / "last.pt")  # epoch 1, finite
    marked(real_checkpoints["resumable1"], run / "weights" / "last.pt", False)  # epoch 2, diverged
    assert choose(run, vault).state.epochs_done == 1
    plan = prepare_resume(run, vault, attempt=2)
    assert plan.epochs_done == 1 and plan.resume_from == run / "weights" / "last.pt"
    assert any("last.pt diverged" in n and "NaN/Inf" in n for n in plan.notes), plan.notes
    assert inspect_checkpoint(run / "weights" / "last.pt").epochs_done == 1
