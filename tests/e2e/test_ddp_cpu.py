"""Multi-GPU (DDP) preemption, end to end on the CPU: Ultralytics' real DDP launch and real DDP training.

The training child is started as the daemon starts it (launcher.spawn: its own session, the job's
environment markers) with a plan for ``device: "0,1"``. tests/ddp_cpu/sitecustomize.py lets that
device string through on a machine without GPUs and puts the ranks on gloo (read it: three small
changes, and a counter of saves). Everything else is real: Ultralytics writes its DDP script and cloudpickled
state with our callbacks, runs ``python -m torch.distributed.run --nproc_per_node 2``, and the two
ranks train yolov8n with DistributedDataParallel, their gradients all-reduced by gloo.

What these tests show, and the GPU tests (tests/gpu/test_ddp_gpu.py) must show again with NCCL:
a SIGTERM as the daemon sends it (launcher.signal_job: every process of the job but torchrun),
a TERM to one rank, or a TERM to the parent alone, stops every rank after the same batch; rank 0
saves once (a TERM during the epoch-end save: no second save) and no rank exits before that save
is done; the attempt exits 75 through the parent; nothing of the job is left running; a hung rank
silences rank 0's heartbeat, so the stall rule fires.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from supervisor.contract import ExitRecord, Progress, from_json, read_json
from supervisor.jobs.states import PREEMPTED_EXIT_CODE, Cause
from supervisor.probes.checkpoint import inspect_checkpoint
from supervisor.process import launcher
from supervisor.process.classify import classify, read_log_tail
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "tests" / "ddp_cpu"
STOP_LINE = re.compile(r"yolo-supervisor \(rank (\d)\): SIGTERM: all 2 ranks stop after (epoch \d+ batch \d+/\d+)")


@pytest.fixture(scope="module")
def ddp_dataset(tmp_path_factory) -> Path:
    """32 images: with batch 4 over two ranks (2 each), 8 batches an epoch on each rank."""
    from supervisor.demo import make_dataset

    return make_dataset(tmp_path_factory.mktemp("ddp-data"), images=32, size=64)


class DdpJob:
    """One attempt of a 2-rank job, started with the daemon's own launcher.spawn."""

    def __init__(self, tmp_path: Path, data: Path, name: str, workers: int = 0):
        self.name, self.daemon_id = name, f"test-ddp-{os.getpid()}-{name}"
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.progress, self.exit_record = self.dir / "progress.json", self.dir / "exit.json"
        self.log, self.saves = self.dir / "train.log", self.dir / "saves.txt"
        train = {"model": "yolov8n.yaml", "data": str(data), "epochs": 6, "imgsz": 64, "batch": 4, "workers": workers,
                 "device": "0,1", "plots": False, "amp": False, "val": False,
                 "project": str(self.dir / "runs"), "name": "train"}
        plan = {"job": name, "attempt": 1, "epochs": 6, "train": train, "resume": None,
                "overrides": {"device": "0,1", "data": str(data)}, "checkpoint_every_s": 0,
                "extend_epochs": None, "progress_file": str(self.progress), "exit_record": str(self.exit_record)}
        self.plan = self.dir / "attempt.json"
        self.plan.write_text(json.dumps(plan))
        self.child: launcher.Child | None = None

    def start(self, monkeypatch) -> "DdpJob":
        path = [str(SITE), str(REPO), os.environ.get("PYTHONPATH")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
        monkeypatch.setenv("YOLO_SUPERVISOR_TEST_DDP_ON_CPU", "1")
        monkeypatch.setenv("YOLO_SUPERVISOR_TEST_SAVES", str(self.saves))
        self.child = launcher.spawn(self.name, 1, self.plan, self.log, self.dir / "yolo-config",
                                    daemon_id=self.daemon_id)
        return self

    def processes(self) -> list[psutil.Process]:
        return launcher.job_processes(self.name, self.child, self.daemon_id)

    def ranks(self) -> dict[int, psutil.Process]:
        """torchrun's children (their DataLoader workers have the same command line and environment)."""
        found = {}
        for p in self.processes():
            try:
                if launcher.is_torch_launcher(psutil.Process(p.ppid()).cmdline()):
                    found[int(p.environ()["RANK"])] = p
            except (psutil.Error, KeyError):
                continue
        return found

    def loader_workers(self) -> list[psutil.Process]:
        ranks = {p.pid for p in self.ranks().values()}
        return [p for p in self.processes() if p.ppid() in ranks]

    def torchrun(self) -> psutil.Process:
        return next(p for p in self.processes() if launcher.is_torch_launcher(p.cmdline()))

    def wait_in_epoch(self, epoch: int, batch: int) -> dict:
        """Until rank 0 reports ``batch`` of ``epoch`` (the first batch of an epoch is always written;
        later ones at most every 2 s, and an epoch here takes about 2 s)."""
        def there():
            p = read_json(self.progress) or {}
            self.assert_running()
            return p if p.get("ddp") and (p.get("epoch") or 0) >= epoch and (p.get("batch") or 0) >= batch \
                and p.get("phase") == "training" else None
        return wait_for(there, 240, interval=0.02, what=f"rank 0 in epoch {epoch} batch {batch}")

    def assert_running(self) -> None:
        if self.child.popen.poll() is not None:
            raise AssertionError(f"child exited {self.child.popen.returncode}:\n{self.log_text()[-4000:]}")

    def wait_exit(self, timeout: float = 90) -> int:
        try:
            return self.child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the attempt did not end within {timeout}s:\n{self.log_text()[-4000:]}") from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def save_lines(self) -> list[tuple[int, int]]:
        """(rank, trainer epoch) of every save_model call, in order."""
        return [(r, e) for r, e, _ in self.saves_timed()]

    def saves_timed(self) -> list[tuple[int, int, float]]:
        text = self.saves.read_text() if self.saves.exists() else ""
        return [(int(r), int(e), float(t)) for r, e, t in (ln.split() for ln in text.splitlines())]

    def wait_exit_watching(self, procs: dict[int, psutil.Process], timeout: float = 90) -> tuple[int, dict]:
        """``wait_exit``, noting when each of ``procs`` ended (a zombie has ended)."""
        ended: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while self.child.popen.poll() is None and time.monotonic() < deadline:
            for key, p in procs.items():
                if key not in ended and not _alive(p):
                    ended[key] = time.time()
            time.sleep(0.005)
        return self.wait_exit(1), ended

    def cleanup(self) -> None:
        if self.child is not None:
            launcher.kill_job_now(self.name, self.child, daemon_id=self.daemon_id)
            if self.child.popen.poll() is None:
                self.child.popen.wait(10)
            self.child.close()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def ddp_job(tmp_path, ddp_dataset, monkeypatch, request):
    # Dataloader workers as on a GPU host (Ultralytics sets workers=0 for a CPU device, and the
    # trainer believes its device is a GPU): they carry the job's marker and get the daemon's TERM too.
    workers = 2 if "daemon_sends" in request.node.name else 0
    job = DdpJob(tmp_path, ddp_dataset, request.node.name.replace("test_", "")[:40], workers).start(monkeypatch)
    yield job
    job.cleanup()


def assert_preempted_at_one_batch(job: DdpJob, rc: int, saves_before: list, epochs_done: int = 1) -> str:
    """The attempt's end as the daemon would see it: 75, both ranks after one batch, one save by rank 0
    (``epochs_done - 1``: the trainer's epoch in a checkpoint of ``epochs_done`` completed epochs)."""
    log = job.log_text()
    assert rc == PREEMPTED_EXIT_CODE, log[-4000:]
    stops = dict((int(r), where) for r, where in STOP_LINE.findall(log))
    assert sorted(stops) == [0, 1], log[-4000:]
    assert stops[0] == stops[1], f"the ranks stopped at different batches: {stops}"
    new_saves = job.save_lines()[len(saves_before):]
    assert new_saves == [(0, epochs_done - 1)], f"saves after the SIGTERM (rank, epoch): {new_saves}"
    record = read_json(job.exit_record)
    assert record["exit_code"] == PREEMPTED_EXIT_CODE and record["rank"] == 0, record
    assert f"stopped after {stops[0]}" in record["preempted"]
    assert f"epoch-level checkpoint, epochs done: {epochs_done}" in record["preempted"]
    outcome = classify(rc, None, from_json(ExitRecord, record), read_log_tail(job.log), True, False)
    assert outcome.cause is Cause.PREEMPTED, outcome
    last = inspect_checkpoint(job.dir / "runs" / "train" / "weights" / "last.pt")
    assert last.is_resumable and last.epochs_done == epochs_done, last
    # What the daemon does once the attempt's process has ended (_end_attempt): SIGKILL what is left
    # (DataLoader workers notice that their trainer has gone within 5 s).
    assert launcher.kill_job_now(job.name, None, daemon_id=job.daemon_id) == []
    assert job.processes() == [], "a process of the job outlived the attempt"
    return stops[0]


def test_sigterm_as_the_daemon_sends_it_stops_every_rank_at_one_batch_and_exits_75(ddp_job):
    ddp_job.wait_in_epoch(2, 1)
    ranks, torchrun, workers = ddp_job.ranks(), ddp_job.torchrun(), ddp_job.loader_workers()
    assert sorted(ranks) == [0, 1] and len(workers) == 4  # 2 DataLoader workers a rank
    saves_before = ddp_job.save_lines()
    assert saves_before == [(0, 0)], saves_before  # the end of epoch 1, on rank 0 only

    sent = launcher.signal_job(ddp_job.name, ddp_job.child, signal.SIGTERM, ddp_job.daemon_id)

    assert sorted(sent) == sorted([ddp_job.child.pid, *(p.pid for p in ranks.values())])
    # not torchrun: it would SIGKILL the ranks 30 s after its own TERM; not the DataLoader workers:
    # PyTorch has a worker die of a TERM, and its rank then fails before it could save
    assert_preempted_at_one_batch(ddp_job, ddp_job.wait_exit(), saves_before)
    assert not any(_alive(p) for p in [torchrun, *ranks.values()]), "the ranks and torchrun ended by themselves"


@pytest.fixture
def slow_save(monkeypatch):
    """Rank 0's preemption save takes 3 s more (a big model's save, on a small one)."""
    monkeypatch.setenv("YOLO_SUPERVISOR_TEST_SLOW_SAVE", "3")


def test_no_rank_exits_before_rank_zeros_save_is_on_disk(slow_save, ddp_job):
    # A rank that exits first makes torchrun TERM the others and SIGKILL them 30 s later (its
    # worker-failure path ignores --shutdown_timeout): a longer save on rank 0 would be cut short.
    ddp_job.wait_in_epoch(2, 1)
    saves_before, ranks = ddp_job.save_lines(), ddp_job.ranks()
    launcher.signal_job(ddp_job.name, ddp_job.child, signal.SIGTERM, ddp_job.daemon_id)

    rc, ended = ddp_job.wait_exit_watching(ranks)
    assert_preempted_at_one_batch(ddp_job, rc, saves_before)
    saved_at = ddp_job.saves_timed()[-1][2]
    assert ended[1] >= saved_at, f"rank 1 ended {saved_at - ended[1]:.2f}s before rank 0's save was done"


def test_a_sigterm_during_the_epoch_end_save_stops_every_rank_after_it_with_no_other_save(slow_save, ddp_job):
    def saving_epoch_2():  # rank 0 reports "validating" just before validation and the 3 s save
        p = read_json(ddp_job.progress) or {}
        ddp_job.assert_running()
        return p.get("epoch") == 2 and p.get("phase") == "validating"
    wait_for(saving_epoch_2, 240, interval=0.01, what="the end of epoch 2")
    saves_before = ddp_job.save_lines()
    launcher.signal_job(ddp_job.name, ddp_job.child, signal.SIGTERM, ddp_job.daemon_id)

    where = assert_preempted_at_one_batch(ddp_job, ddp_job.wait_exit(), saves_before, epochs_done=2)
    assert where == "epoch 2 batch 8/8"  # the epoch-end agreement, after the save in progress


def test_a_sigterm_that_reaches_one_rank_stops_all_of_them_at_the_same_batch(ddp_job):
    ddp_job.wait_in_epoch(2, 1)
    saves_before = ddp_job.save_lines()
    ddp_job.ranks()[1].send_signal(signal.SIGTERM)  # rank 0 and the parent know nothing of it

    assert_preempted_at_one_batch(ddp_job, ddp_job.wait_exit(), saves_before)


def test_a_sigterm_to_the_parent_alone_reaches_the_ranks_and_the_parent_waits_for_their_save(ddp_job):
    ddp_job.wait_in_epoch(2, 1)
    saves_before = ddp_job.save_lines()
    os.kill(ddp_job.child.pid, signal.SIGTERM)  # e.g. `kill PID` by hand; before, it exited at once

    assert_preempted_at_one_batch(ddp_job, ddp_job.wait_exit(), saves_before)
    assert "ranks ended; exiting 75 as rank 0 recorded" in ddp_job.log_text()


def test_a_hung_rank_silences_rank_zeros_heartbeat_and_the_stall_rule_fires(ddp_job):
    from supervisor.probes.progress import stall_verdict

    before = ddp_job.wait_in_epoch(2, 1)
    os.kill(ddp_job.ranks()[1].pid, signal.SIGSTOP)  # rank 0 waits for it in the next all_reduce

    def stalled():
        p = read_json(ddp_job.progress) or {}
        return stall_verdict(from_json(Progress, p), time.time(), ddp_job.child.start_time, 3, 3, 600).stalled and p
    last = wait_for(stalled, 60, interval=0.1, what="the stall rule to fire on rank 0's heartbeat")
    assert last["ddp"]["rank"] == 0 and last["first_batch_at"] == before["first_batch_at"]
    assert last["phase"] == "training" and ddp_job.child.popen.poll() is None

