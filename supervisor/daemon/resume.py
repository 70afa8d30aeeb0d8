"""Get a run directory ready for the next attempt: verify, restore, trim.

Order matters and is the point of this module:
1. the newest *verified* checkpoint is found (last.pt, or the vault's copy when
   last.pt is truncated, bit-flipped or missing) and put at RUN/weights/last.pt;
2. results.csv loses every row the checkpoint does not cover (backup kept);
3. the attempt gets that path explicitly as ``resume`` — never ``resume=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from supervisor import results_csv
from supervisor.probes.checkpoint import CheckpointInfo, CkptKind, inspect_checkpoint
from supervisor.probes.vault import CheckpointVault


@dataclass
class ResumePlan:
    resume_from: Optional[Path]     # None: fresh start
    epochs_done: int                # epochs completed in the checkpoint resumed from
    finished: bool = False          # last.pt is stripped: Ultralytics finished the job
    notes: list[str] = field(default_factory=list)  # what was done, for the job's events


def last_pt(run_dir: Path) -> Path:
    return Path(run_dir) / "weights" / "last.pt"


def best_verified(run_dir: Optional[Path], vault: CheckpointVault) -> tuple[Optional[CheckpointInfo], bool]:
    """(newest resumable checkpoint info, whether last.pt is a finished one) without changing files."""
    info = inspect_checkpoint(last_pt(run_dir)) if run_dir else None
    if info is not None and info.kind is CkptKind.FINISHED:
        return None, True
    copy = vault.newest()
    if info is not None and info.is_resumable and (copy is None or info.epoch >= copy.epoch):
        return info, False
    return copy, False


def prepare_resume(run_dir: Optional[Path], vault: CheckpointVault, attempt: int) -> ResumePlan:
    """Make ``run_dir`` resumable from its newest verified checkpoint, or say it must start fresh."""
    if run_dir is None:
        return ResumePlan(None, 0, notes=["first start: no run directory yet"])
    target = last_pt(run_dir)
    info = inspect_checkpoint(target)
    if info.kind is CkptKind.FINISHED:
        return ResumePlan(None, 0, finished=True, notes=[f"{target} is a finished (stripped) checkpoint"])
    plan = _use_or_restore(target, info, vault)
    if plan.resume_from is not None:
        removed = results_csv.trim_after(
            Path(run_dir) / "results.csv", plan.epochs_done,
            backup=Path(run_dir) / f"results.csv.before-attempt-{attempt}",
        )
        if removed:
            plan.notes.append(f"results.csv: removed {removed} row(s) after epoch {plan.epochs_done} (backup kept)")
    return plan


def _use_or_restore(target: Path, info: CheckpointInfo, vault: CheckpointVault) -> ResumePlan:
    copy = vault.newest()
    if info.is_resumable and (copy is None or info.epoch >= copy.epoch):
        return ResumePlan(target, info.epochs_done, notes=[f"verified {target.name}: epoch {info.epochs_done}"])
    if copy is not None:
        why = info.problem or f"older than the verified copy (epoch {info.epochs_done} < {copy.epochs_done})"
        restored = vault.restore_to(target)
        if restored is not None:
            return ResumePlan(target, restored.epochs_done, notes=[
                f"{target.name} {info.kind.value}: {why}; restored verified copy of epoch {restored.epochs_done}"])
    return ResumePlan(None, 0, notes=[
        f"{target.name} {info.kind.value}: {info.problem or 'not resumable'}; no verified copy: starting fresh "
        "in a new run directory (the old one is kept)"])
