"""executor: slurm, without a cluster: options, sbatch's arguments, Slurm's answers, the outcome table.

The real thing (sbatch, squeue, scancel, a real training across allocations) is in
tests/e2e/test_slurm.py.
"""

import subprocess

import pytest

from supervisor.contract import ExitRecord
from supervisor.daemon.config import DaemonConfig
from supervisor.jobs.slurm_options import SlurmOptions, SlurmSettings, time_seconds
from supervisor.jobs.spec import SpecError, parse_spec
from supervisor.jobs.states import Cause
from supervisor.process import slurm
from supervisor.process.classify import Classified
from supervisor.process.slurm import SlurmJob, outcome
from supervisor.process.slurm_executor import gpu_count


def spec(**extra):
    data = {"name": "j", "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3}}
    data.update(extra)
    return parse_spec(data)


# -- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, seconds", [(2, 120), ("2", 120), ("2:30", 150), ("1:00:00", 3600),
                                            ("1-12", 36 * 3600), ("1-0:30", 24 * 3600 + 1800),
                                            ("0-0:1:5", 65)])
def test_slurm_time_formats(value, seconds):
    assert time_seconds(value) == seconds


@pytest.mark.parametrize("slurm_opts, field", [
    ({"time": "2h"}, "slurm.time"),
    ({"time": 0}, "slurm.time"),
    ({"partition": "gpu;rm -rf /"}, "slurm.partition"),
    ({"mem": "lots"}, "slurm.mem"),
    ({"gpus": -1}, "slurm.gpus"),
    ({"extra_args": "--constraint=a100"}, "slurm.extra_args"),
    ({"extra_args": ["--constraint=a100 --exclusive"]}, "slurm.extra_args"),
    ({"extra_args": ["--comment=$(id)"]}, "slurm.extra_args"),
    ({"extra_args": ["-C", "a100"]}, "slurm.extra_args"),
    ({"extra_args": ["--requeue"]}, "slurm.extra_args"),
    ({"extra_args": ["--signal=B:USR1@60"]}, "slurm.extra_args"),
    ({"extra_args": ["--time=10"]}, "slurm.extra_args"),
    ({"walltime": 5}, "slurm.walltime"),
])
def test_a_bad_slurm_option_is_refused_with_its_field(slurm_opts, field):
    with pytest.raises(SpecError) as err:
        spec(slurm=slurm_opts)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


def test_extra_args_keep_slurms_own_syntax():
    job = spec(slurm={"extra_args": ["--constraint=(a100|h100)&ib", "--gres=gpu:a100:2", "--nodelist=n[1-4]",
                                     "--exclusive", "--mail-type=END,FAIL"]})
    assert len(job.slurm.extra_args) == 5


def test_inside_an_allocation_the_jobs_gpus_are_0_to_n_minus_1():
    from supervisor.process.slurm_executor import SlurmExecutor

    two = spec(train={"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3, "device": "2,5"})
    plan = {"train": {"device": "2,5"}, "overrides": {"device": "2,5"}}
    SlurmExecutor.adjust_plan(None, plan, two)  # uses nothing of the executor itself
    assert plan["train"]["device"] == plan["overrides"]["device"] == "0,1"
    cpu = {"train": {"device": "cpu"}, "overrides": {"device": "cpu"}}
    SlurmExecutor.adjust_plan(None, cpu, spec())
    assert cpu["train"]["device"] == "cpu"


def test_extra_args_say_why_an_owned_option_is_refused():
    with pytest.raises(SpecError) as err:
        spec(slurm={"extra_args": ["--exclusive", "--requeue"]})
    assert "item 1" in str(err.value) and "never two allocations" in str(err.value)


def test_job_options_override_the_config_defaults_and_extra_args_add_up():
    defaults = SlurmSettings(partition="cpu", time="1:00:00", account="vision", extra_args=["--exclusive"])
    job = SlurmOptions(partition="gpu", extra_args=["--constraint=a100"])
    merged = job.merged_over(defaults.defaults)
    assert (merged.partition, merged.time, merged.account) == ("gpu", "1:00:00", "vision")
    assert merged.extra_args == ("--exclusive", "--constraint=a100")


def test_the_executor_defaults_to_local_and_refuses_an_unknown_one():
    assert DaemonConfig().executor == "local"
    assert DaemonConfig.model_validate({"executor": "slurm", "slurm": {"poll_s": 1}}).slurm.poll_s == 1
    with pytest.raises(ValueError, match="executor"):
        DaemonConfig.model_validate({"executor": "pbs"})
    with pytest.raises(ValueError, match="poll_s"):
        DaemonConfig.model_validate({"slurm": {"poll_s": 30}})  # the issue: 5 s or less


def test_gpus_default_to_the_jobs_device_count_and_must_match_it():
    assert gpu_count(spec(), SlurmOptions()) == 0
    two = spec(train={"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3, "device": "2,5"})
    assert gpu_count(two, SlurmOptions()) == 2
    with pytest.raises(OSError, match="slurm.gpus"):
        gpu_count(two, SlurmOptions(gpus=4))


# -- what goes to sbatch ---------------------------------------------------------------------------
def test_sbatch_gets_the_notice_no_requeue_and_the_options():
    args = slurm.sbatch_args(name="ys-x-j", log="/h/jobs/j/train.log", workdir="/h/jobs/j", signal_before_s=120,
                             time_limit="2:00:00", partition="gpu", gpus=2, cpus=8, mem="32G", account=None,
                             qos="high", extra=["--constraint=a100"], comment="c")
    assert "--signal=B:TERM@120" in args and "--no-requeue" in args
    assert not any(a.startswith("--requeue") for a in args)
    assert {"--time=2:00:00", "--partition=gpu", "--gpus=2", "--cpus-per-task=8", "--mem=32G", "--qos=high",
            "--output=/h/jobs/j/train.log", "--open-mode=append"} <= set(args)
    assert args[-1] == "--constraint=a100" and not any(a.startswith("--account") for a in args)


def test_the_batch_script_fails_clearly_when_the_node_cannot_read_the_plan(tmp_path):
    script = slurm.batch_script("/usr/bin/python3", str(tmp_path / "not shared" / "attempt.json"), "j", 1)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.returncode == slurm.NOT_READABLE_EXIT
    assert "cannot read" in done.stderr and "filesystem the compute nodes share" in done.stderr


def test_the_daemons_own_slurm_environment_is_not_passed_to_sbatch():
    env = slurm.submit_env({"PATH": "/bin", "SLURM_JOB_ID": "7", "SBATCH_PARTITION": "x", "YOLO_OFFLINE": "1"})
    assert env == {"PATH": "/bin", "YOLO_OFFLINE": "1"}


# -- Slurm's answers -----------------------------------------------------------------------------
def test_squeue_lines_are_read_by_job_id():
    out = ("12|PENDING|Resources||N/A\n"
           "13|RUNNING|None|node7|2026-12-02T00:41:07\n"
           "14|PENDING|ReqNodeNotAvail, UnavailableNodes:node7|(null)|2026-12-03T00:00:00\n")
    jobs = slurm.parse_squeue(out)
    assert jobs["12"].pending and jobs["12"].reason == "Resources" and jobs["12"].start_time is None
    assert jobs["13"].state == "RUNNING" and jobs["13"].node == "node7" and jobs["13"].start_time
    assert jobs["14"].reason.startswith("ReqNodeNotAvail") and jobs["14"].node == ""


def test_scontrol_show_job_gives_the_exit_code_and_node():
    line = ("JobId=42 JobName=ys-ab-j UserId=root(0) GroupId=root(0) JobState=FAILED Reason=NonZeroExitCode "
            "Dependency=(null) ExitCode=75:0 RunTime=00:01:10 StartTime=2026-12-02T00:41:07 NodeList=node7 "
            "Comment=yolo supervisor WorkDir=/h/jobs/j")
    job = slurm.parse_scontrol(line)
    assert (job.job_id, job.state, job.exit_code, job.signal, job.node) == ("42", "FAILED", 75, None, "node7")
    assert slurm.parse_exit_code("0:9") == (None, 9)
    assert slurm.parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


# -- the outcome table (issue 13, point 4) --------------------------------------------------------------
PREEMPT_RECORD = ExitRecord(exit_code=75, preempted="mid-epoch save")
LOCAL_CRASH = Classified(Cause.CRASHED, "exit 1: RuntimeError: boom")
LOCAL_PREEMPTED = Classified(Cause.PREEMPTED, "SIGTERM: resumable checkpoint saved")
LOCAL_OK = Classified(Cause.COMPLETED, "exit 0")

OUTCOMES = [
    # (Slurm state, exit code, local classification, exit record, cancelled by the daemon, cause)
    ("COMPLETED", 0, LOCAL_OK, ExitRecord(exit_code=0), False, Cause.COMPLETED),
    ("TIMEOUT", None, LOCAL_CRASH, PREEMPT_RECORD, False, Cause.PREEMPTED),
    ("TIMEOUT", None, LOCAL_CRASH, None, False, Cause.KILLED),          # no save after the notice: charged
    ("PREEMPTED", None, LOCAL_CRASH, PREEMPT_RECORD, False, Cause.PREEMPTED),
    ("PREEMPTED", None, LOCAL_CRASH, None, False, Cause.PREEMPTED),
    ("NODE_FAIL", None, LOCAL_CRASH, None, False, Cause.NODE_FAILURE),
    ("BOOT_FAIL", None, LOCAL_CRASH, None, False, Cause.NODE_FAILURE),
    ("OUT_OF_MEMORY", None, LOCAL_CRASH, None, False, Cause.HOST_OOM),
    ("CANCELLED", None, LOCAL_PREEMPTED, PREEMPT_RECORD, False, Cause.KILLED),  # scancel by someone else
    ("CANCELLED", None, LOCAL_PREEMPTED, PREEMPT_RECORD, True, Cause.PREEMPTED),  # the daemon's own stop
    ("CANCELLED", 0, LOCAL_OK, None, True, Cause.TERMINATED),  # stopped while pending: exit 0 is no success
    ("FAILED", 75, LOCAL_PREEMPTED, PREEMPT_RECORD, False, Cause.PREEMPTED),   # the notice save, then exit 75
    ("FAILED", 1, LOCAL_CRASH, ExitRecord(exit_code=1), False, Cause.CRASHED),       # the child's own classification
    ("FAILED", 78, LOCAL_CRASH, None, False, Cause.CONFIG_ERROR),              # the node cannot read the plan
]


@pytest.mark.parametrize("state, code, local, record, by_daemon, cause", OUTCOMES)
def test_slurm_outcome_table(state, code, local, record, by_daemon, cause):
    job = SlurmJob("42", state, node="node7", exit_code=code)
    got = outcome(job, local, record, started=record is not None, by_daemon=by_daemon)
    assert got.cause is cause, got.detail
    assert "42" in got.detail


def test_a_job_slurm_forgot_is_classified_from_its_exit_record():
    got = outcome(None, LOCAL_PREEMPTED, PREEMPT_RECORD, started=True, by_daemon=False)
    assert got.cause is Cause.PREEMPTED and "no longer knows" in got.detail


def test_node_failure_and_preemption_do_not_use_the_restart_budget():
    assert Cause.NODE_FAILURE.is_preemption and Cause.PREEMPTED.is_preemption
    assert not Cause.HOST_OOM.is_preemption and not Cause.KILLED.is_preemption


def test_the_filesystem_of_the_home_is_read_from_the_mount_table():
    from supervisor.process.slurm_executor import filesystem_type

    assert filesystem_type("/proc/self") == "proc"
    found = subprocess.run(["findmnt", "--noheadings", "--output", "FSTYPE", "--target", "/"],
                           capture_output=True, text=True, timeout=10)  # util-linux's own reading
    assert found.returncode == 0, found.stderr
    assert filesystem_type("/") == found.stdout.strip()


def test_a_node_that_cannot_open_the_jobs_folder_fails_the_job_clearly():
    """What Slurm 22.05 reports when --chdir/--output are out of the node's reach (seen for real):
    FAILED, Reason=JobLaunchFailure, ExitCode=0:53, and nothing in the home."""
    job = SlurmJob("35", "FAILED", reason="JobLaunchFailure", node="node7", signal=53)
    got = outcome(job, Classified(Cause.CRASHED, "killed by signal 53"), None, started=False, by_daemon=False)
    assert got.cause is Cause.CONFIG_ERROR
    assert "JobLaunchFailure" in got.detail and "filesystem the compute nodes share" in got.detail
