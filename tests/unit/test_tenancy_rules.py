"""The pure rules of tenancy (issue 19): who may act on a job, the job's environment, where a job
file's notifications may go, which sbatch options a job may pass, what an edit may store."""

from __future__ import annotations

import pytest

from supervisor.control import authz
from supervisor.daemon.config import DaemonConfig
from supervisor.jobs.edit import plan_edit
from supervisor.jobs.slurm_options import check_extra_arg, owned_option
from supervisor.jobs.spec import SpecError, parse_spec
from supervisor.observe.notify import NotifySettings, job_target_problem, targets_for, JobNotify
from supervisor.process import jobenv
from supervisor.process.jobenv import EnvFileError, JobEnvironment

DAEMON, ALICE, MALLORY, BOSS = 0, 1001, 1002, 1003
ADMINS, MEMBERS = 500, 600


@pytest.mark.parametrize("uid, groups, owner, daemon_uid, admin_gid, allowed", [
    (ALICE, {MEMBERS}, ALICE, DAEMON, ADMINS, True),        # the owner
    (MALLORY, {MEMBERS}, ALICE, DAEMON, ADMINS, False),     # the socket group is not enough
    (BOSS, {MEMBERS, ADMINS}, ALICE, DAEMON, ADMINS, True),  # admin_group
    (0, set(), ALICE, 999, None, True),                      # root
    (999, set(), ALICE, 999, None, True),                    # the daemon's own user
    (MALLORY, {ADMINS}, ALICE, DAEMON, None, False),         # no admin_group configured
    (ALICE, set(), None, 999, None, False),                  # no recorded owner: the daemon's user's
    (999, set(), None, 999, None, True),
])
def test_who_may_act_on_a_job(uid, groups, owner, daemon_uid, admin_gid, allowed):
    assert authz.may_act_on_job(uid, frozenset(groups), owner, daemon_uid, admin_gid) is allowed


def test_the_refusal_names_the_owner_and_who_else_may():
    text = authz.refusal("stop", "a1", "uid 1001 (alice)", "uid 1002 (mallory)", None)
    assert "a1 is uid 1001 (alice)'s job" in text and "no admin_group is configured" in text
    assert "admins" not in authz.refusal("stop", "a1", "x", "y", None)
    assert "members of admin_group (ops)" in authz.refusal("stop", "a1", "x", "y", "ops")


# -- the environment -------------------------------------------------------------------------------
ROOT_ENV = {"HOME": "/root", "PATH": "/root/.pyenv/shims:/usr/sbin:/usr/bin", "ADMIN_TOKEN": "s3cret",
            "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC", "NCCL_DEBUG": "INFO",
            "NCCL_IB_HCA": "mlx5", "CUDA_CACHE_PATH": "/cache", "YOLO_SUPERVISOR_FAKE_TRAINER": "/t.py"}
MARKERS = {"YOLO_SUPERVISOR_JOB": "a1", "YOLO_OFFLINE": "1"}


def test_a_job_run_as_another_user_gets_a_built_environment():
    env = jobenv.build(ROOT_ENV, 0 + 1, "/usr/bin/python3", JobEnvironment(("NCCL_*",), {"WANDB_API_KEY": "k"}),
                       MARKERS)
    assert "ADMIN_TOKEN" not in env and "CUDA_CACHE_PATH" not in env
    assert env["PATH"] == jobenv.STANDARD_PATH and env["HOME"] != "/root"
    assert (env["LANG"], env["LC_TIME"], env["TZ"]) == ("C.UTF-8", "en_GB.UTF-8", "UTC")
    assert (env["NCCL_DEBUG"], env["NCCL_IB_HCA"]) == ("INFO", "mlx5")
    assert env["WANDB_API_KEY"] == "k" and env["YOLO_SUPERVISOR_JOB"] == "a1"
    assert env["YOLO_SUPERVISOR_FAKE_TRAINER"] == "/t.py"  # the daemon's own settings


def test_the_path_starts_with_the_training_interpreters_folder():
    env = jobenv.build(ROOT_ENV, 1, "/opt/venv/bin/python", JobEnvironment(), {})
    assert env["PATH"] == "/opt/venv/bin:" + jobenv.STANDARD_PATH


def test_a_job_run_as_the_daemons_user_starts_from_its_environment_and_markers_win():
    env = jobenv.build(ROOT_ENV, None, "/usr/bin/python3", JobEnvironment((), {"X": "1"}), MARKERS)
    assert env["HOME"] == "/root" and env["X"] == "1" and env["YOLO_OFFLINE"] == "1"


def test_an_env_file_is_name_value_lines_and_its_errors_never_quote_a_value():
    text = "# keys\n\nexport WANDB_API_KEY='abc def'\nMLFLOW_TRACKING_TOKEN=\"t=1\"\nPLAIN = x \n"
    assert jobenv.parse_env_file(text, "f") == {"WANDB_API_KEY": "abc def", "MLFLOW_TRACKING_TOKEN": "t=1",
                                                 "PLAIN": "x"}
    with pytest.raises(EnvFileError, match="line 2: expected NAME=value") as err:
        jobenv.parse_env_file("A=1\nsecret-value-without-equals\n", "f")
    assert "secret-value" not in str(err.value)
    with pytest.raises(EnvFileError, match="set by the daemon"):
        jobenv.parse_env_file("YOLO_SUPERVISOR_JOB=other\n", "f")


def test_env_in_a_job_file_is_checked_and_a_bad_one_never_quoted():
    base = {"name": "a", "train": {"model": "m.yaml", "data": "/d.yaml", "epochs": 1}}
    assert parse_spec({**base, "env": {"WANDB_API_KEY": "k"}, "env_file": "/home/a/keys.env"}).env == {
        "WANDB_API_KEY": "k"}
    for env, problem in [({"CUDA_VISIBLE_DEVICES": "0"}, "set by the daemon"),
                         ({"YOLO_SUPERVISOR_DAEMON": "/x"}, "set by the daemon"),
                         ({"1BAD": "v"}, "not a variable name"), ({"KEY": 12345678}, "valid string")]:
        with pytest.raises(SpecError, match=problem) as err:
            parse_spec({**base, "env": env})
        assert "12345678" not in str(err.value)
    with pytest.raises(SpecError, match="absolute path"):
        parse_spec({**base, "env_file": "keys.env"})


def test_pass_env_and_admin_group_are_checked_in_config_yaml():
    assert DaemonConfig(pass_env=["NCCL_*", "CUDA_CACHE_PATH"], admin_group="root").pass_env == ["NCCL_*",
                                                                                                "CUDA_CACHE_PATH"]
    with pytest.raises(ValueError, match="not a variable name"):
        DaemonConfig(pass_env=["A B"])
    with pytest.raises(ValueError, match="no group named"):
        DaemonConfig(admin_group="no-such-group-anywhere")


# -- notification targets of a job file ----------------------------------------------------------
@pytest.mark.parametrize("url, problem", [
    ("json://127.0.0.1:8080/internal/admin?+Authorization=x", "loopback"),
    ("json://[::1]/x", "loopback"),
    ("json://[::ffff:127.0.0.1]/x", "loopback"),
    ("json://localhost:9/x", "loopback"),
    ("json://169.254.169.254/latest", "link-local"),
    ("json://10.1.2.3/hook", "private"),
    ("json://192.168.0.1/hook", "private"),
    ("json://0.0.0.0:80/", "unspecified"),
    ("dbus://", "does not go over the network"),
    ("syslog://", "does not go over the network"),
    ("fcm://project/topic?keyfile=/etc/shadow", "local file"),
    ("mqtt://broker.example.com/topic?cert=%2Froot%2Fkey.pem", "local file"),
    ("json://93.184.216.34/hook", None),
    ("slack://TokenA/TokenB/TokenC/#training", None),  # a token in the host position, not a host
])
def test_a_job_files_target_may_not_reach_this_host_or_read_its_files(url, problem):
    found = job_target_problem(url, [], resolve=False)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert "Authorization" not in found and "shadow" not in found


def test_the_admin_may_allow_hosts_by_name_address_or_network():
    assert job_target_problem("json://10.1.2.3/hook", ["10.1.2.0/24"], resolve=False) is None
    assert job_target_problem("json://127.0.0.1:9/x", ["127.0.0.1"], resolve=False) is None
    assert job_target_problem("json://localhost:9/x", ["localhost"], resolve=False) is None
    assert job_target_problem("json://10.1.3.3/hook", ["10.1.2.0/24"], resolve=False) is not None
    with pytest.raises(ValueError):
        NotifySettings(allow_hosts=["not a host!"])


def test_only_a_job_files_targets_are_checked_before_each_send():
    settings = NotifySettings(urls=["json://127.0.0.1/admin"], allow_hosts=["10.0.0.0/8"])
    targets, _ = targets_for(settings, JobNotify(urls=("json://93.184.216.34/x",)))
    assert [t.allow_hosts for t in targets] == [None, ("10.0.0.0/8",)]


# -- sbatch options --------------------------------------------------------------------------------
@pytest.mark.parametrize("arg, owned", [("--sig=B:USR1@60", "signal"), ("--job-n=x", "job-name"),
                                        ("--outp=/tmp/o", "output"), ("--requ", "requeue"), ("--ui=0", "uid"),
                                        ("--export=ALL", "export"), ("--ex=ALL", "export")])
def test_a_prefix_of_an_owned_sbatch_option_is_that_option(arg, owned):
    with pytest.raises(ValueError, match=f"--{owned}"):
        check_extra_arg(arg)


def test_options_the_daemon_does_not_own_pass():
    for arg in ("--constraint=a100", "--gres=gpu:a100:2", "--mem-per-gpu=10G", "--exclusive", "--nice=10",
                "--time-min=10"):
        assert check_extra_arg(arg) == arg
    assert owned_option("constraint") is None and owned_option("sig") == "signal"


# -- edit ------------------------------------------------------------------------------------------
def test_an_edit_nested_too_deep_is_refused_not_stored():
    spec = parse_spec({"name": "a", "train": {"model": "m.yaml", "data": "/d.yaml", "epochs": 1}})
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(SpecError, match="nested"):
        plan_edit(spec, {"workers": deep}, force=False)
    assert plan_edit(spec, {"workers": 2}, force=False).spec.train["workers"] == 2
