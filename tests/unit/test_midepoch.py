"""Mid-epoch positions: the per-pass sample order, the probe's record, the vault's ordering, the
resume choice, the policy's idea of progress and goodput's redone batches.

The loader tests run Ultralytics' real InfiniteDataLoader (subclassed) over a small real dataset
of indices, with and without worker processes; the checkpoint tests use real checkpoints from a
short real training (``real_checkpoints``) with a mid-epoch record added by torch itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from supervisor.child import midepoch, sample_order
from supervisor.daemon.resume import choose, midepoch_pt, prepare_resume
from supervisor.jobs.spec import parse_spec
from supervisor.jobs.states import Cause
from supervisor.observe.goodput import goodput
from supervisor.policy import Action, AttemptEnd, Budget, decide
from supervisor.contract import MIDEPOCH_KEY
from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint
from supervisor.probes.vault import CheckpointVault
from tests.unit.test_checkpoint import truncated
from tests.unit.test_goodput import att, job


class Indices:
    """A dataset whose items are their own indices (what a batch holds is what was sampled)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def collate(items):
    return list(items)


def loader(n: int, bs: int, workers: int, resume=None, first_key: int = 0):
    order = sample_order.PassOrder(n, seed=7, shuffle=True, batch_size=bs, resume=resume, first_key=first_key)
    cls = sample_order.resumable_loader_class()
    extra = {"prefetch_factor": 2} if workers else {}
    return cls(dataset=Indices(n), batch_size=bs, shuffle=False, num_workers=workers, sampler=order,
               collate_fn=collate, drop_last=False, **extra)


def epochs(dl, count: int) -> list[tuple[int, list[list[int]]]]:
    out = []
    for _ in range(count):
        batches = list(iter(dl))
        out.append((dl.current.key, batches))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_every_epoch_is_one_whole_permutation_named_by_its_key(workers):
    dl = loader(n=37, bs=8, workers=workers)
    assert len(dl) == 5
    seen = epochs(dl, 3)
    for key, batches in seen:
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(37)) and len(batches) == 5
        assert flat == dl.sampler.order(key)  # the key alone names the order
    assert [k for k, _ in seen] == [0, 1, 2]
    assert seen[0][1] != seen[1][1]  # reshuffled each pass
    dl.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_pass_yields_exactly_the_batches_not_yet_trained(workers):
    full = loader(n=37, bs=8, workers=0)
    key, reference = epochs(full, 2)[1]  # the epoch that will be interrupted
    dl = loader(n=37, bs=8, workers=workers, resume=sample_order.Pass(key, skip=3))
    assert len(dl) == 5  # Ultralytics reads nb once: it stays the full epoch
    (k1, rest), (k2, after) = epochs(dl, 2)
    assert k1 == key and rest == reference[3:]  # none skipped, none twice, same batch composition
    assert k2 == key + 1 and sorted(i for b in after for i in b) == list(range(37))
    dl.close()


def test_reset_drops_passes_drawn_ahead_but_keeps_an_unconsumed_resume():
    order = sample_order.PassOrder(10, seed=1, shuffle=True, batch_size=2, resume=sample_order.Pass(4, skip=2))
    drawn = list(iter(order))          # drawn ahead by a prefetching loader, then dropped by reset()
    assert drawn == order.order(4)[4:]
    order.drop_started()
    assert list(iter(order)) == drawn  # the resume pass comes again
    assert order.take_started().key == 4 and order.resume is None
    assert list(iter(order)) == order.order(5)


def test_pass_batches_follows_the_batch_sampler():
    assert sample_order.pass_batches(37, 8, 0, drop_last=False) == 5
    assert sample_order.pass_batches(37, 8, 3, drop_last=False) == 2
    assert sample_order.pass_batches(37, 8, 3, drop_last=True) == 1


def test_the_version_guard_refuses_an_untested_version(monkeypatch):
    assert midepoch.support_problem("cpu") is None  # the installed, tested version is supported
    monkeypatch.setenv("YOLO_SUPERVISOR_PRETEND_ULTRALYTICS", "8.5.0")
    assert "8.5.0 is not a version" in midepoch.support_problem("cpu")
    monkeypatch.setenv("YOLO_SUPERVISOR_PRETEND_ULTRALYTICS", "8.4.191")  # a patch release is not tested
    assert "8.4.191 is not a version" in midepoch.support_problem("cpu") and "8.4.190" in midepoch.support_problem()
    monkeypatch.delenv("YOLO_SUPERVISOR_PRETEND_ULTRALYTICS")
    assert "multi-GPU (DDP)" in midepoch.support_problem("0,1")
    assert midepoch.support_problem("0") is None


def test_the_guard_checks_the_shape_of_save_model_and_load_checkpoint_state():
    from ultralytics.engine.trainer import BaseTrainer

    assert midepoch._unexpected_shape(BaseTrainer) is None

    class WritesInPlace(BaseTrainer):
        def save_model(self):  # a save that no longer goes through write_bytes: the atomic wrap misses it
            import torch
            torch.save({}, self.last)

    class LoadsElsewhere(BaseTrainer):
        def _load_checkpoint_state(self, ckpt, strict=True):
            pass

    assert midepoch._unexpected_shape(WritesInPlace) == "save_model"
    assert midepoch._unexpected_shape(LoadsElsewhere) == "_load_checkpoint_state"


def test_a_record_from_another_ultralytics_resumes_the_epoch_from_its_start(monkeypatch):
    notes = []
    mid = midepoch.MidEpoch(0, {"epoch": 2, "next_batch": 5, "batches": 20, "pass_key": 2, "seed": 0,
                                "shuffle": True, "dataset_len": 160, "batch_size": 8, "ultralytics": "8.4.100"},
                            note=notes.append)
    resumed = mid._resume_pass(160, 8, True)
    assert resumed.skip == 0 and mid.resume_skip == 0
    assert "ultralytics 8.4.100 -> 8.4.190" in notes[0] and "epoch 3 is trained again from its start" in notes[0]


# --------------------------------------------------------------------------- real checkpoints


def with_midepoch(src: Path, dst: Path, epoch: int, next_batch: int, batches: int = 20, **extra) -> Path:
    """A real checkpoint saved as the child saves a mid-epoch state: ``epoch`` (0-based) under way."""
    import torch

    ckpt = torch.load(src, weights_only=False)
    ckpt["epoch"] = epoch - 1
    ckpt[MIDEPOCH_KEY] = {"format": 1, "epoch": epoch, "next_batch": next_batch, "batches": batches,
                          "pass_key": epoch, "seed": 0, "shuffle": True, "dataset_len": 160, "batch_size": 8,
                          "last_opt_step": 7, "accumulate": 4, "tloss": {"box_loss": 1.5}, **extra}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def test_a_mid_epoch_state_is_resumable_even_inside_the_first_epoch(real_checkpoints, tmp_path):
    first = inspect_checkpoint(with_midepoch(real_checkpoints["resumable0"], tmp_path / "m0.pt", 0, 12))
    assert first.kind is CkptKind.RESUMABLE and first.epoch == -1 and first.position == (0, 12)
    assert first.where() == "epoch 1 batch 12/20"
    later = inspect_checkpoint(with_midepoch(real_checkpoints["resumable1"], tmp_path / "m2.pt", 2, 5))
    assert later.position == (2, 5) and later.epochs_done == 2


def test_an_inconsistent_record_is_corrupt(real_checkpoints, tmp_path):
    bad = with_midepoch(real_checkpoints["resumable0"], tmp_path / "bad.pt", 2, 25, batches=20)
    info = inspect_checkpoint(bad)
    assert info.kind is CkptKind.CORRUPT and "inconsistent" in info.problem


def test_the_vault_orders_states_by_position_and_prunes_superseded_ones(real_checkpoints, tmp_path):
    v = CheckpointVault(tmp_path / "vault", keep=2)
    weights = tmp_path / "run" / "weights"
    last = weights / "last.pt"
    last.parent.mkdir(parents=True)
    shutil.copyfile(real_checkpoints["resumable0"], last)              # epoch 1 complete: position (1, 0)
    assert v.snapshot(last).position == (1, 0)
    mid = with_midepoch(real_checkpoints["resumable0"], weights / "midepoch.pt", 1, 8)
    assert v.snapshot(mid).position == (1, 8)                             # inside epoch 2
    with_midepoch(real_checkpoints["resumable0"], weights / "midepoch.pt", 1, 15)
    assert v.snapshot(mid).position == (1, 15)
    assert v.newest().position == (1, 15)
    shutil.copyfile(real_checkpoints["resumable1"], last)              # epoch 2 complete supersedes both
    assert v.snapshot(last).position == (2, 0)
    names = sorted(p.name for p in (tmp_path / "vault").iterdir() if p.suffix == ".pt")
    assert names == ["epoch-00000.pt", "epoch-00001.pt"]               # the mid copies of epoch 2 are gone
    assert v.snapshot(mid) is None                                      # unchanged source: not copied again
    with_midepoch(real_checkpoints["resumable0"], weights / "midepoch.pt", 1, 18)
    assert v.snapshot(mid) is None                                      # older than the newest copy


def test_resume_takes_the_state_furthest_along_and_restores_a_damaged_mid_state(real_checkpoints, tmp_path):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copyfile(real_checkpoints["resumable0"], run / "weights" / "last.pt")
    mid = with_midepoch(real_checkpoints["resumable0"], midepoch_pt(run), 1, 14)
    v = CheckpointVault(tmp_path / "vault")
    plan = prepare_resume(run, v, attempt=2)
    assert plan.resume_from == mid and plan.position == (1, 14)
    v.snapshot(mid)
    truncated(mid, mid, keep=1000)                                      # a kill inside a later save
    plan = prepare_resume(run, v, attempt=3)
    assert plan.resume_from == mid and plan.position == (1, 14)
    assert inspect_checkpoint(mid).position == (1, 14) and "restored verified copy" in plan.notes[0]
    shutil.copyfile(real_checkpoints["resumable1"], run / "weights" / "last.pt")  # epoch 2 ended after it
    plan = prepare_resume(run, v, attempt=4)
    assert plan.resume_from == run / "weights" / "last.pt" and plan.position == (2, 0)


def test_states_across_a_batch_change_are_ordered_by_images_not_batches(real_checkpoints, tmp_path):
    """on_oom: reduce_batch: batch 8 saved at batch 15 (120 images); the resume with batch 4 goes on at
    batch 30. Its save at batch 25 would be behind (100 images), its save at batch 34 ahead (136 images):
    images decide, not batch indices."""
    v = CheckpointVault(tmp_path / "vault", keep=2)
    run = tmp_path / "run"
    mid = with_midepoch(real_checkpoints["resumable0"], midepoch_pt(run), 1, 15, batches=20)  # 120 images
    assert v.snapshot(mid).trained == (1, 120)
    with_midepoch(real_checkpoints["resumable0"], mid, 1, 25, batches=40, batch_size=4)       # 100 images
    assert v.snapshot(mid) is None                                   # behind the copy, though batch 25 > 15
    assert choose(run, v).from_vault and choose(run, v).state.trained == (1, 120)
    with_midepoch(real_checkpoints["resumable0"], mid, 1, 34, batches=40, batch_size=4)       # 136 images
    kept = v.snapshot(mid)
    assert kept.trained == (1, 136) and v.newest().trained == (1, 136)
    assert choose(run, v).state.path == mid                          # the newer file in place, not the copy
    plan = prepare_resume(run, v, attempt=3)
    assert plan.position == (1, 34) and plan.images == 136


def test_a_halved_batch_is_progress_in_images():
    s = spec(restart={"max_no_progress": 1})
    halved = AttemptEnd(Cause.CUDA_OOM, epochs_before=1, epochs_after=1, images_before=120, images_after=136)
    assert halved.progressed and decide(s, Budget(), halved).action is Action.RESTART


# --------------------------------------------------------------------------- policy, spec, goodput


def spec(**extra):
    return parse_spec({"name": "j", "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 10}, **extra})


def test_a_mid_epoch_save_counts_as_progress():
    """Two kills inside one hour-long epoch: each resumed further along, so the job is not failed."""
    s = spec(restart={"max_no_progress": 1})
    moved = AttemptEnd(Cause.KILLED, epochs_before=3, epochs_after=3, images_before=800, images_after=1440)
    assert moved.progressed
    assert decide(s, Budget(no_progress_streak=0), moved).action is Action.RESTART
    stuck = AttemptEnd(Cause.KILLED, epochs_before=3, epochs_after=3, images_before=1440, images_after=1440)
    assert decide(s, Budget(no_progress_streak=0), stuck).action is Action.FAIL


def test_checkpoint_every_defaults_to_ten_minutes_and_can_be_off():
    assert spec().checkpoint_every_s == 600
    assert spec(checkpoint_every="90s").checkpoint_every_s == 90
    assert spec(checkpoint_every="off").checkpoint_every_s == 0
    with pytest.raises(ValueError, match="checkpoint_every"):
        spec(checkpoint_every="soon")


def mid_att(n, start, first, end, cause, before=0, batch_before=0, after=None, reached=None, batches=None):
    a = att(n, start, first, end, cause, before=before, after=after, reached=reached)
    a.batch_before, a.batches_reached, a.batches_per_epoch = batch_before, batches, 240
    return a


def test_goodput_counts_batches_trained_twice():
    # killed at epoch 4 batch 168 (0-based position 3*240+168), last save at batch 150: resumed there
    mid = [mid_att(1, 0, 1, 100, "killed", after=3, reached=3, batches=3 * 240 + 168),
           mid_att(2, 101, 105, 200, "completed", before=3, batch_before=150, after=10, batches=10 * 240)]
    g = goodput(job("completed"), mid, now=300)
    assert g.epochs_redone == 0 and g.batches_redone == 18
    assert g.interruptions[0].resumed_batch == 150
    # the same kill with epoch-level resume only: the whole partial epoch is trained again
    epoch_level = [mid_att(1, 0, 1, 100, "killed", after=3, reached=3, batches=3 * 240 + 168),
                   mid_att(2, 101, 105, 200, "completed", before=3, after=10, batches=10 * 240)]
    assert goodput(job("completed"), epoch_level, now=300).batches_redone == 168


def test_a_source_the_vault_verified_is_not_read_again_until_it_changes(real_checkpoints, tmp_path, monkeypatch):
    from supervisor.probes import checkpoint as probe
    from supervisor.daemon import resume

    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    last = run / "weights" / "last.pt"
    shutil.copyfile(real_checkpoints["resumable1"], last)
    v = CheckpointVault(tmp_path / "vault")
    assert v.snapshot(last) is not None
    reads = []
    real = probe.inspect_checkpoint
    monkeypatch.setattr(probe, "inspect_checkpoint", lambda p: reads.append(Path(p)) or real(p))
    info = resume.verified(last, v)
    assert info.path == last and info.position == (2, 0) and last not in reads
    shutil.copyfile(real_checkpoints["resumable0"], last)                 # rewritten: checked again
    assert resume.verified(last, v).position == (1, 0) and last in reads


# -- the position a save records and a resume takes (the arithmetic, without a trainer) -------------
class _Param:
    def __init__(self, grad):
        self.grad = grad


class _Model:
    def __init__(self):
        self.params = [_Param("g1"), _Param(None)]

    def parameters(self):
        return self.params

    def state_dict(self):
        return {"w": 1}


class _Trainer:
    def __init__(self, wdir: Path):
        self.wdir, self.model, self.accumulate, self.tloss = wdir, _Model(), 4, {"box": 1.5}


def _do_train(self, i, nb, epoch, last_opt_step, batch=None):  # noqa: ARG001 - read from this frame
    """Stands in for BaseTrainer._do_train: MidEpoch.save reads the loop's locals from its frame."""
    return self.mid.save(self)


@pytest.fixture
def saving(tmp_path, monkeypatch):
    written: list[tuple[int, dict]] = []
    monkeypatch.setattr(midepoch, "_unwrap", lambda model: model)
    monkeypatch.setattr(midepoch, "_ultralytics_version", lambda: "8.4.0")
    monkeypatch.setattr(midepoch, "checkpoint_bytes",
                        lambda trainer, epoch, extra: written.append((epoch, extra)) or b"checkpoint")
    reports: list[dict] = []
    mid = midepoch.MidEpoch(interval_s=60, on_saved=lambda rec, seconds: reports.append(rec))
    trainer = _Trainer(tmp_path)
    trainer.mid = mid
    mid.trainer, mid.seed = trainer, 3
    mid.loader = type("Loader", (), {"current": midepoch.Pass(key=5),
                                     "sampler": midepoch.PassOrder(240, 3, True, 8)})()
    return trainer, written, reports


def test_a_save_records_the_batch_after_the_one_that_just_ended(saving, tmp_path):
    trainer, written, reports = saving
    record = _do_train(trainer, i=6, nb=30, epoch=2, last_opt_step=6 + 30 * 2)
    assert record["next_batch"] == 7 and record["epoch"] == 2 and record["batches"] == 30
    assert (record["pass_key"], record["seed"], record["dataset_len"], record["batch_size"]) == (5, 3, 240, 8)
    assert record["shuffle"] is True and record["accumulate"] == 4 and record["tloss"] == {"box": 1.5}
    assert record["grads_pending"] is False and record["last_opt_step"] == 66
    [(epoch, extra)] = written
    assert epoch == 2 and extra[midepoch.MIDEPOCH_KEY] is record and extra[midepoch.GRADS_KEY] is None
    assert extra[midepoch.MODEL_KEY] == {"w": 1}
    assert (tmp_path / midepoch.MIDEPOCH_NAME).read_bytes() == b"checkpoint"
    assert reports == [{**record, "size": len(b"checkpoint")}]
    assert record["format"] == midepoch.RECORD_FORMAT and record["saved_at"] > 0
    assert not trainer.mid.due(preempt=False)                 # the save restarted the timer
    assert trainer.mid.due(preempt=True)


def test_a_save_between_optimizer_steps_keeps_the_accumulated_gradients(saving):
    trainer, written, _ = saving
    record = _do_train(trainer, i=6, nb=30, epoch=2, last_opt_step=64)
    assert record["grads_pending"] is True and record["next_batch"] == 7
    assert written[0][1][midepoch.GRADS_KEY] == ["g1", None]


def test_no_save_at_an_epochs_last_batch(saving, tmp_path):
    trainer, written, reports = saving
    assert _do_train(trainer, i=29, nb=30, epoch=2, last_opt_step=89) is None
    assert _do_train(trainer, i=28, nb=30, epoch=2, last_opt_step=88)["next_batch"] == 29
    assert len(written) == len(reports) == 1


def test_saves_are_due_every_interval_and_never_when_off(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(midepoch.time, "monotonic", lambda: clock[0])
    timed, off = midepoch.MidEpoch(interval_s=10), midepoch.MidEpoch(interval_s=0)
    clock[0] = 109.9
    assert not timed.due(False) and not off.due(False)
    clock[0] = 110.0
    assert timed.due(False) and not off.due(False) and off.due(True)
    timed.epoch_saved()
    assert not timed.due(False)
    half = midepoch.MidEpoch(interval_s=0.5)                 # sub-second intervals too (the e2e tests use them)
    clock[0] += 0.5
    assert half.due(False)


def _record(**changes) -> dict:
    return {"epoch": 2, "next_batch": 7, "batches": 30, "pass_key": 5, "seed": 3, "dataset_len": 240,
            "batch_size": 8, "shuffle": True, "last_opt_step": 66, "world_size": 1,
            "ultralytics": midepoch._ultralytics_version(), **changes}


def test_a_resume_starts_at_the_recorded_batch_of_the_recorded_pass():
    mid = midepoch.MidEpoch(interval_s=60, record=_record())
    assert mid._resume_pass(240, 8, True) == midepoch.Pass(5, 7) and mid.resume_skip == 7
    mid.loader = loader_obj = object()
    mid.trainer = type("T", (), {"epoch": 2, "start_epoch": 2})()
    assert mid.enumerate_start(loader_obj) == 7
    assert mid.enumerate_start(object()) == 0                 # another loader (validation) counts from 0
    mid.trainer.epoch = 3
    assert mid.enumerate_start(loader_obj) == 0               # the epochs after the resumed one: from 0


@pytest.mark.parametrize("n, shuffle, changes, why", [
    (200, True, {}, "dataset_len 240 -> 200"),
    (240, False, {}, "shuffle True -> False"),
    (240, True, {"world_size": 2}, "world_size 2 -> 1"),
    (240, True, {"ultralytics": "8.4.0"}, f"ultralytics 8.4.0 -> {midepoch._ultralytics_version()}")])
def test_a_resume_that_cannot_be_exact_trains_the_epoch_again_and_says_why(n, shuffle, changes, why):
    """Another order of images (dataset, shuffle, ranks) or another Ultralytics' record: epoch level.
    A changed batch size is not among them: the position is an image (the batch-change tests)."""
    notes: list[str] = []
    bs = 8
    mid = midepoch.MidEpoch(interval_s=60, record=_record(**changes), note=notes.append)
    assert mid._resume_pass(n, bs, shuffle) == midepoch.Pass(6) and mid.resume_skip == 0
    assert notes == [f"mid-epoch resume not exact ({why}): epoch 3 is trained again from its start"]
    assert mid._resume_pass(n, bs, shuffle) is None           # decided once


def test_no_record_means_no_resume_pass():
    assert midepoch.MidEpoch(interval_s=60)._resume_pass(240, 8, True) is None
