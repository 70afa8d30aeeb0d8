"""Multi-GPU (DDP) pieces that run without GPUs and without training (issue 12, item 6).

- Ultralytics' real ``generate_ddp_file`` on a real trainer carries our callbacks to the ranks, and a
  rank that loads them gets its own SIGTERM handler and writes nothing unless it is rank 0.
- The daemon's SIGTERM skips a real ``torch.distributed.run`` but reaches its workers, and torchrun
  exits by itself once they have; the SIGKILL still reaches everything.
The full stop (every rank at one batch, one save, exit 75) is tests/e2e/test_ddp_cpu.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervisor.child import ddp
from supervisor.process import launcher, torchrun
from tests.conftest import offline_env, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cmdline, expected", [
    (["/venv/bin/python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "/x/_temp_1.py"], True),
    (["python3", "-m", "torch.distributed.launch", "x.py"], True),
    (["/usr/local/bin/torchrun", "--nproc_per_node=2", "train.py"], True),
    (["/usr/bin/python3", "/usr/local/bin/torchrun", "train.py"], True),
    (["/venv/bin/python", "-m", "supervisor.child.train", "attempt.json"], False),
    (["/venv/bin/python", "/cfg/Ultralytics/DDP/_temp_1.py"], False),  # a rank
    (["python", "train.py", "torch.distributed.run"], False),
    ([], False),
])
def test_what_counts_as_torchrun(cmdline, expected):
    assert torchrun.is_torch_launcher(cmdline) is expected


@pytest.mark.parametrize("env, rank", [
    ({}, None),
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),   # torchrun with one process: nothing to agree on
    ({"RANK": "0", "WORLD_SIZE": "2"}, 0),
    ({"RANK": "3", "WORLD_SIZE": "4"}, 3),
    ({"RANK": "x", "WORLD_SIZE": "2"}, None),
])
def test_current_rank(monkeypatch, env, rank):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert ddp.current_rank() == rank


@pytest.mark.parametrize("device, gpus", [
    ("cpu", 0), ("0", 1), ("0,1", 2), ("cuda:0,1", 2), ("[0, 1]", 2), ("-1,-1", 2), ("2,3,4,5", 4), ("", 0),
])
def test_requested_gpus_reads_the_device_as_ultralytics_does(device, gpus):
    assert ddp.requested_gpus(device) == gpus


def test_the_installed_ultralytics_launches_ddp_as_expected():
    assert ddp.support_problem() is None


def test_a_launch_that_ships_no_callbacks_is_a_support_problem(monkeypatch):
    from ultralytics.utils import dist

    monkeypatch.setattr(dist, "generate_ddp_file", lambda trainer: "no callbacks shipped")
    assert "was not tested" in ddp.support_problem()


def test_the_child_environment_numbers_gpus_as_nvml_does(tmp_path):
    assert launcher.child_env("j", 1, tmp_path)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


# -- the launcher parent, after torchrun failed --------------------------------------------------

TORCHRUN_FAILED = subprocess.CalledProcessError(1, ["/venv/bin/python", "-m", "torch.distributed.run",
                                                    "--nproc_per_node", "2", "/cfg/DDP/_temp_1.py"])


def _parent(tmp_path: Path):
    from supervisor.child import train
    from supervisor.contract import Plan

    return train, train.Reporter(Plan(job="j", attempt=1, epochs=3, train={},
                                      progress_file=str(tmp_path / "progress.json"),
                                      exit_record=str(tmp_path / "exit.json")))


def test_the_parent_ends_with_the_exit_record_rank_zero_wrote(tmp_path):
    train, rep = _parent(tmp_path)
    rank0 = {"exit_code": 75, "rank": 0, "preempted": "DDP: all 2 ranks stopped after epoch 2 batch 3/8"}
    (tmp_path / "exit.json").write_text(json.dumps(rank0))
    assert train.ddp_launch_failed(rep, TORCHRUN_FAILED) == 75
    assert json.loads((tmp_path / "exit.json").read_text()) == rank0  # kept as rank 0 wrote it


def test_a_ddp_crash_is_recorded_as_one_that_reached_training(tmp_path):
    # e.g. a CUDA OOM in a rank: no record from rank 0, and the parent's own state never saw a batch
    train, rep = _parent(tmp_path)
    (tmp_path / "progress.json").write_text(json.dumps({"ddp": {"rank": 0}, "first_batch_at": 123.0,
                                                        "phase": "training"}))
    assert train.ddp_launch_failed(rep, TORCHRUN_FAILED) is None  # the caller records the failure
    rep.exit_record(1, exception="CalledProcessError")
    assert json.loads((tmp_path / "exit.json").read_text())["reached_training"] is True


def test_another_failed_command_is_no_ddp_launch(tmp_path):
    train, rep = _parent(tmp_path)
    (tmp_path / "exit.json").write_text(json.dumps({"exit_code": 75, "rank": 0}))
    assert train.ddp_launch_failed(rep, subprocess.CalledProcessError(1, ["git", "status"])) is None


# -- our callbacks in Ultralytics' DDP state ----------------------------------------------------

MAKE_DDP_FILE = r"""
import json, sys
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.dist import generate_ddp_file
from supervisor.child import train
from supervisor.contract import Plan

progress, exit_record, data, project = sys.argv[1:5]
rep = train.Reporter(Plan(job="j", attempt=1, epochs=2, train={}, progress_file=progress, exit_record=exit_record))
model = YOLO("yolov8n.yaml")
train._install_callbacks(model, rep, None)
# What Model.train does before trainer.train(); device=cpu, so the trainer is built here without GPUs.
trainer = DetectionTrainer(overrides={"model": "yolov8n.yaml", "data": data, "device": "cpu", "epochs": 2,
                                      "imgsz": 64, "batch": 4, "workers": 0, "project": project, "name": "t",
                                      "plots": False}, _callbacks=model.callbacks)
trainer.model = trainer.get_model(cfg=model.model.yaml, weights=None, verbose=False)
print(json.dumps({"file": generate_ddp_file(trainer)}))
"""

LOAD_AS_A_RANK = r"""
import json, os, signal, sys
from ultralytics.utils.patches import torch_load

state = torch_load(sys.argv[1].replace(".py", ".pt"), map_location="cpu")  # as the generated script does
ours = sorted(e for e, cbs in state["callbacks"].items()
              for cb in cbs if getattr(cb, "__module__", "") == "supervisor.child.train")
handler = signal.getsignal(signal.SIGTERM)
rep = None
if callable(handler) and getattr(handler, "__module__", "") == "supervisor.child.stop":
    rep = handler.__closure__[0].cell_contents
    rep.beat(force=True, phase="training")
    rep.exit_record(75, preempted="test")
print(json.dumps({"ours": ours, "rank": None if rep is None else rep.rank,
                  "ddp": None if rep is None else rep.state.get("ddp"),
                  "wrote_progress": os.path.exists(sys.argv[2]), "wrote_exit": os.path.exists(sys.argv[3])}))
"""


@pytest.fixture(scope="module")
def ddp_file(tmp_path_factory) -> dict:
    from supervisor.demo import make_dataset

    root = tmp_path_factory.mktemp("ddp-file")
    data = make_dataset(root / "data", images=8, size=64)
    progress, exit_record = root / "progress.json", root / "exit.json"
    done = subprocess.run([sys.executable, "-c", MAKE_DDP_FILE, str(progress), str(exit_record), str(data),
                           str(root / "runs")], capture_output=True, text=True, timeout=300,
                          env=_env(root / "cfg"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"file": json.loads(done.stdout.strip().splitlines()[-1])["file"], "progress": progress,
            "exit": exit_record, "cfg": root / "cfg"}


def _env(cfg: Path, **extra: str) -> dict[str, str]:
    env = offline_env(cfg)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    env.update(extra)
    return env


def _load(ddp_file: dict, **rank_env: str) -> dict:
    for f in (ddp_file["progress"], ddp_file["exit"]):
        Path(f).unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", LOAD_AS_A_RANK, ddp_file["file"], str(ddp_file["progress"]),
                           str(ddp_file["exit"])], capture_output=True, text=True, timeout=300,
                          env=_env(ddp_file["cfg"], **rank_env))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ultralytics_ddp_state_carries_our_callbacks_to_every_rank(ddp_file):
    rank1 = _load(ddp_file, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2")
    assert {"on_train_batch_end", "on_fit_epoch_end", "on_train_epoch_start"} <= set(rank1["ours"])
    # loading the state installed our SIGTERM handler in the rank, and rank 1 writes nothing
    assert rank1["rank"] == 1 and rank1["ddp"]["world_size"] == 2
    assert not rank1["wrote_progress"] and not rank1["wrote_exit"]

    rank0 = _load(ddp_file, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    assert rank0["rank"] == 0 and rank0["wrote_progress"] and rank0["wrote_exit"]
    assert json.loads(Path(ddp_file["exit"]).read_text())["rank"] == 0  # the parent adopts only rank 0's record


def test_outside_torchrun_loading_the_state_installs_nothing(ddp_file):
    alone = _load(ddp_file)
    assert alone["ours"] and alone["rank"] is None  # no handler of ours: a plain process is not a rank


# -- the daemon's signals and a real torchrun --------------------------------------------------

WORKER = "import time\nwhile True:\n    time.sleep(0.05)\n"


def _start_torchrun(tmp_path: Path, job: str, daemon_id: str) -> subprocess.Popen:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = launcher.child_env(job, 1, tmp_path / "cfg", daemon_id)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(worker)]
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(job: str, daemon_id: str) -> list[psutil.Process]:
    found = []
    for p in launcher.job_processes(job, daemon_id=daemon_id):
        try:
            if "LOCAL_RANK" in p.environ():
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_the_daemons_sigterm_skips_torchrun_which_exits_once_its_workers_have(tmp_path):
    job, daemon_id = "ddp-term", f"test-{os.getpid()}-term"
    run = _start_torchrun(tmp_path, job, daemon_id)
    try:
        workers = wait_for(lambda: len(_workers(job, daemon_id)) == 2 and _workers(job, daemon_id), 120,
                           what="torchrun's two workers")
        sent = launcher.signal_job(job, None, signal.SIGTERM, daemon_id)
        assert run.pid not in sent
        assert {w.pid for w in workers} <= set(sent)
        assert run.wait(60) != 0  # its workers died of the TERM: torchrun reports them and exits
        assert launcher.job_processes(job, daemon_id=daemon_id) == []
    finally:
        launcher.kill_job_now(job, None, daemon_id=daemon_id)
        run.wait(10)


def test_sigkill_still_reaches_torchrun(tmp_path):
    job, daemon_id = "ddp-kill", f"test-{os.getpid()}-kill"
    run = _start_torchrun(tmp_path, job, daemon_id)
    try:
        wait_for(lambda: len(_workers(job, daemon_id)) == 2, 120, what="torchrun's two workers")
        assert launcher.kill_job_now(job, None, daemon_id=daemon_id) == []
        assert run.wait(10) == -signal.SIGKILL
        assert launcher.job_processes(job, daemon_id=daemon_id) == []
    finally:
        launcher.kill_job_now(job, None, daemon_id=daemon_id)


PARENT_WITH_HELPER = r"""
import multiprocessing, os, sys, time

def helper():  # like a DataLoader worker: forked, same command line and environment
    time.sleep(600)

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    worker = multiprocessing.Process(target=helper)
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(600)
"""


def test_a_sigterm_reaches_the_trainer_but_not_its_dataloader_workers(tmp_path):
    # PyTorch has a DataLoader worker die of a TERM, and its trainer then fails before it could save.
    job, daemon_id = "helpers", f"test-{os.getpid()}-helpers"
    script = tmp_path / "trainer.py"
    script.write_text(PARENT_WITH_HELPER)
    run = subprocess.Popen([sys.executable, str(script)], env=launcher.child_env(job, 1, tmp_path, daemon_id),
                           start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        helper = int(run.stdout.readline())
        root = launcher.identify(job, run.pid)
        wait_for(lambda: len(launcher.job_processes(job, root, daemon_id)) == 2, 30, what="the helper")
        assert launcher.signal_job(job, root, signal.SIGTERM, daemon_id) == [run.pid]
        assert run.wait(30) == -signal.SIGTERM
        assert psutil.Process(helper).status() != psutil.STATUS_ZOMBIE  # its parent's to end, or the SIGKILL's
        assert launcher.signal_job(job, root, signal.SIGTERM, daemon_id) == [helper]  # now an orphan: TERMed
    finally:
        launcher.kill_job_now(job, None, daemon_id=daemon_id)

