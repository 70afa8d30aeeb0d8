"""executor: slurm end to end: a real daemon submitting real sbatch jobs to a real (single-node)
Slurm cluster, real CPU training across allocations, real scancel and a real daemon restart.

The cluster comes from scripts/slurm_single_node.sh (.ci/run starts it). Where sbatch is
missing or no controller answers, the tests marked `slurm` skip and say why, except where
YOLO_SUPERVISOR_REQUIRE=slurm is set (CI sets it): there they fail.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor import results_csv
from supervisor.contract import read_json
from tests.accounts import account, open_dir  # noqa: F401 - fixtures
from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket


def slurm_problem() -> str | None:
    """Why the slurm tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch not found: no Slurm here (scripts/slurm_single_node.sh sets up a single-node cluster)"
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo did not answer: {err}"
    if done.returncode != 0:
        return f"no Slurm controller answers: {done.stderr.strip()[:300]}"
    if not any(s.strip().rstrip("*~#") in ("idle", "mixed", "allocated") for s in done.stdout.split()):
        return f"no usable Slurm node (sinfo says {done.stdout.split()})"
    return None


REQUIRE_ENV = "YOLO_SUPERVISOR_REQUIRE"  # "slurm" (CI sets it): no cluster fails these tests, not skips them


def slurm_required() -> bool:
    return "slurm" in os.environ.get(REQUIRE_ENV, "").replace(",", " ").split()


@pytest.fixture(scope="session")
def slurm_node() -> str:
    problem = slurm_problem()
    if problem and slurm_required():
        pytest.fail(f"{REQUIRE_ENV}=slurm, and Slurm cannot run here: {problem}", pytrace=False)
    if problem:
        pytest.skip(problem)
    out = subprocess.run(["sinfo", "--noheader", "--format=%N"], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def our_jobs() -> dict[str, tuple[str, str]]:
    """Active Slurm jobs submitted by a yolo-supervisor daemon: id -> (state, job name)."""
    out = subprocess.run(["squeue", "--noheader", "--format=%i|%T|%j"], capture_output=True, text=True, timeout=15)
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, state, name = line.split("|", 2)
        if name.startswith("ys-"):
            jobs[job_id] = (state, name)
    return jobs


@pytest.fixture
def slurm_daemon(daemon, slurm_node):
    """Start the ``daemon`` fixture with ``executor: slurm``; afterwards no job of it is left in Slurm."""
    def start(**settings):
        daemon.home.mkdir(parents=True, exist_ok=True)
        config = {"executor": "slurm", "tick_s": 0.5, "slurm": {"poll_s": 1, **settings}}
        (daemon.home / "config.yaml").write_text(yaml.safe_dump(config))
        daemon.start()
        wait_socket(daemon)
        return daemon
    yield start
    daemon.stop()  # first: a daemon still running would resubmit what the cleanup cancels
    for job_id in our_jobs():
        subprocess.run(["scancel", job_id], capture_output=True, timeout=15)
    wait_for(lambda: not our_jobs(), 60, interval=0.5, what="the test's Slurm jobs to end")


@pytest.fixture
def fake_trainer(monkeypatch):
    """Training replaced by tests/e2e/fake_trainer.py; the variable reaches the node through sbatch --export."""
    from tests.conftest import FAKE_TRAINER

    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))


@pytest.fixture
def drained(slurm_node):
    """The only node drained for the test (jobs then wait with Slurm's reason), resumed after."""
    subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=drain", "reason=yolo-supervisor test"],
                   check=True, capture_output=True, timeout=15)
    try:
        yield slurm_node
    finally:
        subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=resume"], capture_output=True,
                       timeout=15)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def progress(daemon, name):
    return read_json(daemon.home / "jobs" / name / "progress.json") or {}


def status_json(daemon, name) -> dict:
    [row] = json.loads(ok(ctl(daemon.home, "status", name, "--json")))
    return row


def assert_every_epoch_once(job, epochs):
    got = results_csv.read_epochs(Path(job.run_dir) / "results.csv")
    assert got == list(range(1, epochs + 1)), got


def assert_one_allocation_at_a_time(attempts):
    """The daemon resubmits only after the previous Slurm job ended: never two at once."""
    for before, after in zip(attempts, attempts[1:]):
        assert before.ended_at is not None and after.started_at >= before.ended_at, (before, after)
        assert before.slurm_job_id != after.slurm_job_id


# -- the tests ------------------------------------------------------------------------------------
def test_executor_slurm_without_sbatch_refuses_to_start_and_says_why(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("executor: slurm\n")
    env = dict(os.environ, PATH=str(tmp_path / "empty-path"))
    done = subprocess.run([sys.executable, "-m", "supervisor.daemon.main", "--home", str(home)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert "executor: slurm: sbatch" in done.stderr and "not found on PATH" in done.stderr


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1500)  # 2.5 minutes here; a loaded machine trains slower and needs more allocations
def test_a_training_longer_than_its_allocation_completes_across_allocations(slurm_daemon, tmp_path):
    """time: 2 minutes, notice 40 s before: SIGTERM, a save, exit 75, the daemon verifies and resubmits.

    Slurm sends the notice up to a minute early (its timer's resolution: 20 to 80 s into each
    allocation; 53 to 60 s was seen), so the training needs more than the most one allocation
    gives on a fast, idle 2-core machine: 80 epochs of 64 images at 1.3 to 3 s an epoch.
    """
    from supervisor.demo import make_dataset

    epochs = 80
    data = make_dataset(tmp_path / "data", images=64, size=64)
    d = slurm_daemon(signal_before_s=40)
    d.drop(cpu_job("tl", data, epochs=epochs, slurm={"time": 2}))
    job = d.wait_state("tl", ["completed", "failed"], timeout=1200)
    attempts = d.attempts("tl")
    causes = [a.cause for a in attempts]
    assert job.state == "completed", (job.state_reason, [(a.cause, a.detail) for a in attempts])
    assert len(attempts) >= 2 and "preempted" in causes, [(a.cause, a.detail) for a in attempts]
    # Every allocation but the last ended on its notice; the last one finished (or, rarely, got its
    # notice after the last epoch was saved: then the next launch finds the training complete).
    assert set(causes) <= {"preempted", "completed"}, [(a.cause, a.detail) for a in attempts]
    assert all("after the notice" in a.detail or "resumable checkpoint saved" in a.detail
               for a in attempts if a.cause == "preempted"), [a.detail for a in attempts]
    assert job.crash_restarts == 0  # the end of an allocation is not the job's fault
    assert all(a.resumed_from for a in attempts[1:])
    assert_one_allocation_at_a_time(attempts)
    assert_every_epoch_once(job, epochs)


@pytest.mark.slurm
def test_scancel_of_a_running_allocation_is_resubmitted_and_resumed(slurm_daemon, dataset):
    d = slurm_daemon()
    d.drop(cpu_job("sc", dataset, epochs=3))
    wait_for(lambda: (progress(d, "sc").get("epoch") or 0) >= 2 and progress(d, "sc").get("phase") == "training",
             300, what="sc training in epoch 2")
    first = d.job("sc").slurm_job_id
    subprocess.run(["scancel", first], check=True, capture_output=True, timeout=15)  # an operator, not the daemon

    job = d.wait_state("sc", ["completed", "failed"], timeout=400)
    attempts = d.attempts("sc")
    assert job.state == "completed", (job.state_reason, [(a.cause, a.detail) for a in attempts])
    assert attempts[0].slurm_job_id == first and attempts[0].cause == "killed"
    assert "CANCELLED outside the daemon" in attempts[0].detail
    assert len(attempts) == 2 and attempts[1].resumed_from  # resumed, not started again
    assert (attempts[1].epochs_before, attempts[1].batch_before or 0) > (0, 0)
    assert_one_allocation_at_a_time(attempts)
    assert_every_epoch_once(job, 3)


@pytest.mark.slurm
def test_a_pending_job_shows_queued_with_slurms_reason(slurm_daemon, fake_trainer, drained):
    d = slurm_daemon()
    d.drop(cpu_job("wait", FAKE_DATA, epochs=2))
    wait_for(lambda: d.job("wait"), 60, what="the dropped job taken in")  # the inbox is read off the loop
    row = wait_for(lambda: (r := status_json(d, "wait")).get("slurm") and r["slurm"]["state"] == "PENDING"
                   and r["slurm"]["reason"] not in ("", "None") and r, 60, what="a pending Slurm job with a reason")
    job_id, reason = row["slurm"]["job_id"], row["slurm"]["reason"]
    assert our_jobs()[job_id][0] == "PENDING"
    text = ok(ctl(d.home, "status"))
    line = next(ln for ln in text.splitlines() if ln.startswith("wait "))
    assert line.split()[1] == "queued" and f"slurm:{job_id}" in line
    assert f"wait: Slurm job {job_id} pending ({reason})" in text
    # The job's reason follows at the loop's next housekeeping, after the watcher saw the state.
    wait_for(lambda: f"queued in Slurm as job {job_id}" in d.job("wait").state_reason, 30,
             what="the job's reason to name the Slurm job")
    assert any(e.kind == "slurm" and reason in e.reason for e in d.events("wait"))

    ok(ctl(d.home, "stop", "wait"))  # nothing to save: cancelled at once
    job = d.wait_state("wait", "stopped", timeout=60)
    [attempt] = d.attempts("wait")
    assert attempt.cause == "stopped" and job.crash_restarts == 0
    wait_for(lambda: job_id not in our_jobs(), 30, what="the pending job to leave Slurm's queue")


@pytest.mark.slurm
def test_a_daemon_restart_re_adopts_the_running_allocation(slurm_daemon, fake_trainer, slurm_node):
    d = slurm_daemon()
    d.drop(cpu_job("adopt", FAKE_DATA, epochs=2))
    d.wait_state("adopt", "running", timeout=120)
    job_id = d.job("adopt").slurm_job_id
    wait_for(lambda: (status_json(d, "adopt").get("slurm") or {}).get("state") == "RUNNING", 30,
             what="Slurm to report the job running")

    d.stop()  # SIGTERM: the daemon ends, the allocation goes on
    assert our_jobs()[job_id][0] == "RUNNING"
    d.start()
    wait_socket(d)
    wait_for(lambda: any(e.kind == "adopted" and job_id in e.reason for e in d.events("adopt")), 30,
             what="the allocation re-adopted")
    row = wait_for(lambda: (r := status_json(d, "adopt")).get("slurm") and r["slurm"].get("node") and r, 30,
                   what="status with the Slurm job and node")
    assert row["state"] == "running" and row["slurm"]["job_id"] == job_id and row["slurm"]["node"] == slurm_node
    assert list(our_jobs()) == [job_id]  # not submitted again
    assert len(d.attempts("adopt")) == 1

    ok(ctl(d.home, "stop", "adopt", "--wait"))  # TERM through scancel --signal: the child saves and exits 75
    job = d.wait_state("adopt", "stopped", timeout=60)
    [attempt] = d.attempts("adopt")
    assert attempt.slurm_job_id == job_id and attempt.slurm_node == slurm_node
    # It exited by itself (75) after the TERM: not cancelled, which Slurm would record as CANCELLED.
    assert attempt.exit_code == 75 and "which Slurm records as FAILED" in attempt.detail, attempt.detail
    assert job.crash_restarts == 0
    history = ok(ctl(d.home, "history", "adopt"))
    assert f"slurm:{job_id}@{slurm_node}" in history


@pytest.mark.slurm
def test_an_option_slurm_refuses_fails_the_job_with_sbatchs_reason(slurm_daemon, fake_trainer):
    d = slurm_daemon()
    d.drop(cpu_job("badpart", FAKE_DATA, epochs=2, slurm={"partition": "nosuchpartition"}))
    job = d.wait_state("badpart", "failed", timeout=60)
    assert "sbatch" in job.state_reason and "partition" in job.state_reason.lower(), job.state_reason
    assert d.attempts("badpart") == [] and not our_jobs()


@pytest.mark.slurm
def test_a_silent_allocation_is_found_stalled_from_its_heartbeat_and_resubmitted(slurm_daemon, fake_trainer):
    """The stall rule reads the heartbeat the node writes into the shared home, as locally."""
    import signal

    d = slurm_daemon()
    d.drop(cpu_job("hush", FAKE_DATA, epochs=2, health={"stall_timeout": 8, "stop_grace": 2}))
    d.wait_state("hush", "running", timeout=120)
    first = d.job("hush").slurm_job_id
    pid = wait_for(lambda: progress(d, "hush").get("pid"), 30, what="the child's pid in its progress file")
    os.kill(pid, signal.SIGSTOP)  # the process on the node freezes: no more heartbeats

    wait_for(lambda: len(d.attempts("hush")) >= 2, 120, what="a second attempt after the stall")
    attempts = d.attempts("hush")
    assert attempts[0].cause == "stalled" and attempts[0].slurm_job_id == first, attempts[0]
    assert "no progress" in attempts[0].detail
    assert attempts[1].slurm_job_id != first
    assert_one_allocation_at_a_time(attempts)
    assert first not in our_jobs()


@pytest.mark.slurm
def test_a_root_daemon_submits_each_job_as_its_owner(open_dir, account, slurm_node, monkeypatch):  # noqa: F811
    """Slurm's accounts, fair share and limits apply to the person who submitted the job."""
    from tests.accounts import SYSTEM_PYTHON
    from tests.conftest import FAKE_TRAINER, DaemonProcess

    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"needs root and {SYSTEM_PYTHON} (a job run as another user)")
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    monkeypatch.setenv("YOLO_SUPERVISOR_CHILD_PYTHON", SYSTEM_PYTHON)  # root's venv is out of the user's reach
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the node's cwd is the job folder
    d = DaemonProcess(open_dir / "home")
    d.home.mkdir(parents=True)
    # PYTHONPATH: a job run as its owner gets a built environment; the admin passes this one on.
    (d.home / "config.yaml").write_text(yaml.safe_dump({"executor": "slurm", "tick_s": 0.5, "slurm": {"poll_s": 1},
                                                        "pass_env": ["PYTHONPATH"]}))
    d.start()
    try:
        wait_socket(d)
        tmp = d.home / "inbox" / ".owned.tmp"
        tmp.write_text(yaml.safe_dump(cpu_job("owned", FAKE_DATA, epochs=2)))
        os.chown(tmp, account.uid, account.gid)
        tmp.rename(d.home / "inbox" / "owned.yaml")
        d.wait_state("owned", "running", timeout=120)
        job_id = d.job("owned").slurm_job_id
        out = subprocess.run(["squeue", "--noheader", "--format=%u", f"--jobs={job_id}"], capture_output=True,
                             text=True, timeout=15)
        assert out.stdout.strip() == account.name  # submitted by the owner, not by root
        pid = wait_for(lambda: progress(d, "owned").get("pid"), 30, what="the child's pid")
        uid_line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
        assert {int(v) for v in uid_line.split()[1:]} == {account.uid}
        ok(ctl(d.home, "stop", "owned", "--wait"))
        assert d.job("owned").state == "stopped"
    finally:
        d.stop()
        for job_id in our_jobs():
            subprocess.run(["scancel", job_id], capture_output=True, timeout=15)
        wait_for(lambda: not our_jobs(), 60, interval=0.5, what="the test's Slurm jobs to end")


def node_state(node: str) -> str:
    out = subprocess.run(["sinfo", "--noheader", "--format=%T", f"--nodes={node}"], capture_output=True, text=True,
                         timeout=15)
    return out.stdout.strip()


@pytest.mark.slurm
def test_a_failed_node_is_node_failure_and_uses_no_budget(slurm_daemon, fake_trainer, slurm_node):
    """The node under a running allocation goes down (Slurm: NODE_FAIL); the job waits for a node again."""
    d = slurm_daemon()
    d.drop(cpu_job("nf", FAKE_DATA, epochs=2, restart={"max_restarts": 0, "backoff": {"initial": 0.5, "max": 1}}))
    d.wait_state("nf", "running", timeout=120)
    try:
        subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=down", "reason=yolo-supervisor test"],
                       check=True, capture_output=True, timeout=15)
        wait_for(lambda: len(d.attempts("nf")) >= 2, 60, what="the job submitted again after the node failed")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=resume"], capture_output=True,
                       timeout=15)  # refused when the node came back by itself (ReturnToService=2)
        wait_for(lambda: node_state(slurm_node) in ("idle", "mixed", "allocated"), 60, interval=0.5,
                 what="the node back")
    first = d.attempts("nf")[0]
    assert first.cause == "node_failure" and "NODE_FAIL" in first.detail, first.detail
    job = d.wait_state("nf", "running", timeout=120)  # max_restarts 0, and still not failed: no budget used
    assert job.crash_restarts == 0 and job.attempts == 2


@pytest.mark.slurm
def test_gpu_jobs_go_to_slurm_not_to_the_daemons_own_placement(slurm_daemon, fake_trainer):
    """With executor: slurm the daemon's host has no GPUs to place: a `gpus: 2` job is neither
    refused at submit nor left waiting for local GPUs, its request reaches sbatch (--gpus=2), and
    this GPU-less test cluster refuses it with Slurm's own reason."""
    d = slurm_daemon()
    spec = cpu_job("twogpus", FAKE_DATA, epochs=2)
    del spec["train"]["device"]
    spec["gpus"] = 2
    d.drop(spec)
    job = d.wait_state("twogpus", "failed", timeout=60)
    assert "sbatch" in job.state_reason and "gres" in job.state_reason, job.state_reason


class WatchdogListener:
    """systemd's side of sd_notify: a datagram socket that notes when each WATCHDOG=1 arrives."""

    def __init__(self, path: Path):
        import socket
        import threading
        import time

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.pings: list[float] = []
        self._time = time.monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            if b"WATCHDOG=1" in data:
                self.pings.append(self._time())

    def longest_gap(self, since: float, until: float) -> float:
        times = [since, *[t for t in self.pings if since <= t <= until], until]
        return max(b - a for a, b in zip(times, times[1:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def stopped_controller():
    """SIGSTOP slurmctld (an outage: it neither answers nor refuses) until the test resumes it."""
    pid = int(Path("/run/slurmctld.pid").read_text().split()[0])

    def stop():
        os.kill(pid, signal.SIGSTOP)

    def resume():
        os.kill(pid, signal.SIGCONT)
    try:
        yield stop, resume
    finally:
        resume()


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_a_controller_outage_pauses_and_never_kills(slurm_daemon, fake_trainer, stopped_controller, tmp_path,
                                                     monkeypatch):
    """slurmctld stopped with 5 jobs due: the watchdog is pinged throughout, no running job is
    cancelled, charged or restarted, and everything resumes when the controller returns.
    Before: each due launch ran squeue and sbatch on the loop, each up to command_timeout_s, so the
    loop (and its watchdog ping) stopped for longer than systemd's WatchdogSec."""
    import time

    stop, resume = stopped_controller
    watchdog = WatchdogListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", str(10_000_000))  # systemd's WatchdogSec=10: a ping every 5 s
    try:
        d = slurm_daemon(command_timeout_s=5)
        d.drop(cpu_job("run0", FAKE_DATA, epochs=2))
        d.wait_state("run0", "running", timeout=120)
        job_id = d.job("run0").slurm_job_id
        wait_for(lambda: (status_json(d, "run0").get("slurm") or {}).get("state") == "RUNNING", 30,
                 what="Slurm to report run0 running")

        stop()
        outage = time.monotonic()
        for i in range(5):
            d.drop(cpu_job(f"due{i}", FAKE_DATA, epochs=2))
        wait_for(lambda: "does not answer" in ((status_json(d, "run0").get("slurm") or {}).get("warning") or ""),
                 60, interval=0.5, what="status to warn that Slurm does not answer")
        beats = (progress(d, "run0").get("updated_at") or 0, time.time())
        wait_for(lambda: time.monotonic() - outage > 40 and d.job("due4") is not None, 120, interval=1,
                 what="40 s of outage")
        assert (progress(d, "run0").get("updated_at") or 0) > beats[0], "the training went on through the outage"
        gap = watchdog.longest_gap(outage, time.monotonic())
        run0 = d.job("run0")
        assert run0.state == "running" and run0.crash_restarts == 0 and len(d.attempts("run0")) == 1
        assert all(d.job(f"due{i}").state in ("queued", "backoff") for i in range(5))

        resume()
        assert our_jobs().get(job_id, ("gone",))[0] == "RUNNING", "the running allocation was cancelled"
        wait_for(lambda: all(d.job(f"due{i}").slurm_job_id for i in range(5)), 180, interval=1,
                 what="every due job submitted once the controller is back")
        assert d.job("run0").state == "running" and len(d.attempts("run0")) == 1
        assert not any(e.kind == "signal" for e in d.events("run0")), "a signal or cancel during the outage"
        assert gap < 10, f"the watchdog went {gap:.1f}s without a ping (WatchdogSec=10 would restart the daemon)"
        wait_for(lambda: (status_json(d, "run0").get("slurm") or {}).get("warning") is None, 60,
                 what="the warning to clear")
    finally:
        watchdog.close()
