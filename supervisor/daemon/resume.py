"""Get a run directory ready for the next attempt: verify, restore, trim.

Order matters and is the point of this module:
1. the newest *verified* state is found: RUN/weights/midepoch.pt (a mid-epoch state), last.pt
   (a completed epoch), or the vault's copy of either when the file is truncated, bit-flipped,
   missing or older; it is put back under its own name in RUN/weights/;
2. results.csv loses every row the state does not cover (backup kept);
3. the attempt gets that path explicitly as ``resume`` — never ``resume=True``.

States are ordered by training done (completed epochs, images trained in the next epoch), never by
raw batch index (a resume with a halved batch numbers the same images with other batches), so a
mid-epoch state beats the last.pt of the epoch before it and loses to the last.pt of its own epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from supervisor import results_csv
from supervisor.contract import FINAL_RESUMABLE_NAME, MIDEPOCH_NAME
from supervisor.probes.checkpoint import CheckpointInfo, CkptKind, inspect_checkpoint_cached
from supervisor.probes.vault import CheckpointVault



@dataclass
class ResumePlan:
    resume_from: Optional[Path]     # None: fresh start
    epochs_done: int                # epochs completed in the state resumed from
    finished: bool = False          # last.pt is stripped: Ultralytics finished the job
    notes: list[str] = field(default_factory=list)  # what was done, for the job's events
    batch: int = 0                  # batches of the next epoch already in the state (mid-epoch)
    train_args: Optional[dict] = None  # the state's own train arguments (for the mismatch guard)
    images: int = 0                 # images of the next epoch already in the state (what progress compares)

    @property
    def position(self) -> tuple[int, int]:
        return (self.epochs_done, self.batch)


def last_pt(run_dir: Path) -> Path:
    return Path(run_dir) / "weights" / "last.pt"


def midepoch_pt(run_dir: Path) -> Path:
    return Path(run_dir) / "weights" / MIDEPOCH_NAME


def final_resumable_pt(run_dir: Path) -> Path:
    return Path(run_dir) / "weights" / FINAL_RESUMABLE_NAME


def verified(path: Path, vault: CheckpointVault) -> CheckpointInfo:
    """``path`` checked, unless the vault copied and verified it and it has not changed since."""
    return vault.verified_source(path) or inspect_checkpoint_cached(path)


def best_verified(run_dir: Optional[Path], vault: CheckpointVault) -> tuple[Optional[CheckpointInfo], bool]:
    """(newest resumable state, whether last.pt is a finished one) without changing files."""
    last = verified(last_pt(run_dir), vault) if run_dir else None
    if last is not None and last.kind is CkptKind.FINISHED:
        return None, True
    candidates = [vault.newest()]
    if run_dir:
        candidates += [last, verified(midepoch_pt(run_dir), vault)]
    return _newest(candidates), False


@dataclass
class Choice:
    """What the next attempt would resume from, decided without changing any file."""

    state: Optional[CheckpointInfo]   # the state furthest along (on disk, or a vault copy)
    from_vault: bool                  # the state is a vault copy: it must be restored first
    last: Optional[CheckpointInfo]    # RUN/weights/last.pt as verified now
    mid: Optional[CheckpointInfo]     # RUN/weights/midepoch.pt as verified now
    finished: bool = False            # last.pt is stripped: the training is over


def choose(run_dir: Optional[Path], vault: CheckpointVault, extended: bool = False) -> Choice:
    """The state a resume takes: the one furthest along; on a tie the file in place, not its copy.

    ``extended``: the job was given more epochs, so a finished (stripped) last.pt does not end it;
    the last resumable state (the vault's copy of the final epoch) is resumed instead."""
    if run_dir is None:
        return Choice(None, False, None, None)
    last = verified(last_pt(run_dir), vault)
    if last.kind is CkptKind.FINISHED and not extended:
        return Choice(None, False, last, None, finished=True)
    mid = verified(midepoch_pt(run_dir), vault)
    on_disk, copy = _newest([mid, last]), vault.newest()
    if on_disk is not None and (copy is None or on_disk.trained >= copy.trained):
        return Choice(on_disk, False, last, mid)
    return Choice(copy, copy is not None, last, mid)


def prepare_resume(run_dir: Optional[Path], vault: CheckpointVault, attempt: int,
                   extended: bool = False) -> ResumePlan:
    """Make ``run_dir`` resumable from its newest verified state, or say it must start fresh."""
    if run_dir is None:
        return ResumePlan(None, 0, notes=["first start: no run directory yet"])
    choice = choose(run_dir, vault, extended)
    if choice.finished:
        return ResumePlan(None, 0, finished=True, notes=[f"{choice.last.path} is a finished (stripped) checkpoint"])
    plan = _use_or_restore(run_dir, choice, vault)
    if plan.resume_from is not None:
        removed = results_csv.trim_after(
            Path(run_dir) / "results.csv", plan.epochs_done,
            backup=Path(run_dir) / f"results.csv.before-attempt-{attempt}",
        )
        if removed:
            plan.notes.append(f"results.csv: removed {removed} row(s) after epoch {plan.epochs_done} (backup kept)")
    return plan


def _newest(infos: list[Optional[CheckpointInfo]]) -> Optional[CheckpointInfo]:
    """The resumable state furthest along; on a tie the first listed (the file in place)."""
    best: Optional[CheckpointInfo] = None
    for info in infos:
        if info is not None and info.is_resumable and (best is None or info.trained > best.trained):
            best = info
    return best


def _use_or_restore(run_dir: Path, choice: Choice, vault: CheckpointVault) -> ResumePlan:
    state, last, mid = choice.state, choice.last, choice.mid
    if state is not None and not choice.from_vault:
        return _plan(state, [f"verified {state.path.name}: {state.where()}"])
    if state is not None:
        target = midepoch_pt(run_dir) if state.midepoch else last_pt(run_dir)
        bad = mid if state.midepoch else last
        why = bad.problem or (f"older than the verified copy ({bad.where()} < {state.where()})"
                              if bad.is_resumable else "not resumable")
        restored = vault.restore_to(target, state)
        if restored is not None:
            return _plan(restored, [f"{target.name} {bad.kind.value}: {why}; restored verified copy of "
                                    f"{restored.where()}"])
    return ResumePlan(None, 0, notes=[
        f"{last.path.name} {last.kind.value}: {last.problem or 'not resumable'}; no verified copy: "
        "starting fresh in a new run directory (the old one is kept)"])


def _plan(info: CheckpointInfo, notes: list[str]) -> ResumePlan:
    done, batch = info.position
    return ResumePlan(info.path, done, notes=notes, batch=batch, train_args=info.train_args,
                      images=info.trained[1])


def checkpoint_mismatch(train_args: Optional[dict], spec_train: dict, run_dir: Optional[Path],
                        edited: frozenset[str] | set[str] = frozenset()) -> Optional[str]:
    """Why a checkpoint is not this job's (another run's last.pt copied in by hand), or None.

    Compared: where the run lives (Ultralytics resumes *into* the checkpoint's own save_dir), the
    model (after a resume Ultralytics records the resumed file itself, inside the run's weights),
    the task, the dataset, imgsz and epochs; a key the user changed with ``edit`` may differ.
    """
    if not train_args:
        return None
    found = []
    saved_in = train_args.get("save_dir")
    if run_dir is not None and isinstance(saved_in, str) and _norm(saved_in) != _norm(str(run_dir)):
        found.append(f"it belongs to the run in {saved_in}, not {run_dir}")
    model = train_args.get("model")
    own_weights = run_dir is not None and isinstance(model, str) and _norm(str(Path(model).parent)) == \
        _norm(str(Path(run_dir) / "weights"))
    if isinstance(model, str) and model != spec_train.get("model") and not own_weights:
        found.append(f"model {model} (the job's: {spec_train.get('model')})")
    for key, default in (("task", "detect"), ("data", None), ("imgsz", 640), ("epochs", None)):
        if key in edited:
            continue
        want, got = spec_train.get(key, default), train_args.get(key)
        if got is not None and want is not None and not _same(key, got, want):
            found.append(f"{key} {got} (the job's: {want})")
    return "; ".join(found) or None


def _same(key: str, got, want) -> bool:
    if key == "data":
        return _norm(str(got)) == _norm(str(want)) or Path(str(got)).name == str(want)
    return got == want


def _norm(path: str) -> str:
    import os

    return os.path.normpath(os.path.abspath(path))
