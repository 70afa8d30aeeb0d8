"""The systemd unit, the install script and the example configs say what the daemon needs."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.daemon.config import DaemonConfig, load_config
from supervisor.jobs.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "yolo-supervisor.service"


def unit_section(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(UNIT)
    return dict(parser[name])


def test_unit_declares_the_service_contract():
    service = unit_section("Service")
    assert {k: service.get(k) for k in ("Type", "NotifyAccess", "WatchdogSec", "KillMode", "OOMPolicy",
                                       "Restart", "User", "Group", "StateDirectory", "ExecReload")} == {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "KillMode": "process",
        "OOMPolicy": "continue", "Restart": "on-failure", "User": "yolo-supervisor", "Group": "yolo-supervisor",
        "StateDirectory": "yolo-supervisor", "ExecReload": "/bin/kill -HUP $MAINPID"}
    assert service["ExecStart"].startswith("/") and "--home /var/lib/yolo-supervisor" in service["ExecStart"]
    # GPU access: no device sandboxing of any kind
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectKernelLogs", "ProtectClock"):
        assert key not in service, key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path):
    """Any complaint about the unit (unknown key, bad value) fails; ExecStart points at a real binary here."""
    text = UNIT.read_text()
    exec_start = unit_section("Service")["ExecStart"].split()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(exec_start, shutil.which("true")))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    about_unit = [ln for ln in (result.stdout + result.stderr).splitlines() if UNIT.name in ln]
    assert result.returncode == 0 and not about_unit, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above is not blind: a misspelt key is reported."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("KillMode=", "KilMode=").replace(
        unit_section("Service")["ExecStart"].split()[0], shutil.which("true")))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert "KilMode" in result.stdout + result.stderr


def test_install_script_dry_run_does_every_step():
    result = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run", "--operator", "alice"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    user_exists = subprocess.run(["id", "-u", "yolo-supervisor"], capture_output=True).returncode == 0
    for step in ("-m venv /opt/yolo-supervisor", f"pip install -q -c {ROOT / 'constraints.txt'} {ROOT}",
                 "/opt/yolo-supervisor/share/doc/yolo-supervisor/",
                 "usermod -aG yolo-supervisor alice", "install -d -m 3770", "/var/lib/yolo-supervisor/inbox",
                 "write /etc/systemd/system/yolo-supervisor.service", "systemctl daemon-reload",
                 "systemctl enable --now yolo-supervisor.service"):
        assert step in out, step
    # the service user is made once: never again where it exists
    assert ("useradd --system" in out) is not user_exists, out


def test_example_daemon_config_documents_every_field():
    path = ROOT / "configs" / "daemon.yaml"
    load_config(path)  # valid
    text = path.read_text()
    missing = [f for f in DaemonConfig.model_fields if f"\n{f}:" not in text]
    assert not missing, missing


def test_example_jobs_are_valid():
    jobs = {load_spec(p).name: load_spec(p) for p in sorted((ROOT / "configs" / "jobs").glob("*.yaml"))}
    assert any(spec.device == "cpu" for spec in jobs.values())
    assert any(len(spec.gpu_indices) == 2 for spec in jobs.values())


def test_install_script_refuses_a_python_it_cannot_use(tmp_path):
    result = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run", "--python", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--python" in result.stderr and "not found" in result.stdout, result


def test_install_script_dry_run_without_constraints_beside_system_torch():
    result = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run", "--system-site-packages"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-m venv --system-site-packages /opt/yolo-supervisor" in result.stdout
    assert "constraints.txt" not in result.stdout


def test_unit_documentation_is_a_file_the_install_copies():
    doc = unit_section("Unit")["Documentation"]
    assert doc == "file:///opt/yolo-supervisor/share/doc/yolo-supervisor/README.md"
    assert "README.md" in (ROOT / "scripts" / "install.sh").read_text()


def test_constraints_pin_what_pyproject_leaves_open():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], deps  # ranges in the package, pins in constraints.txt
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "torchvision", "ultralytics", "pydantic", "psutil"):
        assert name in pins, name
    for script in ("scripts/test.sh", "scripts/demo.sh", "scripts/bench.sh", "scripts/install.sh"):
        assert "constraints.txt" in (ROOT / script).read_text(), script


def test_multi_gpu_launch_needs_no_install_at_run_time():
    """Ultralytics' DDP launch calls check_requirements('cloudpickle>=3.1.1'); offline, that install fails."""
    import importlib.metadata

    from packaging.version import Version

    assert Version(importlib.metadata.version("cloudpickle")) >= Version("3.1.1")
    text = (ROOT / "pyproject.toml").read_text()
    assert '"cloudpickle>=3.1.1"' in text
