"""The daemon never imports torch or ultralytics: training code runs only in the child."""

import subprocess
import sys

DAEMON_MODULES = [
    "supervisor.daemon.main", "supervisor.daemon.core", "supervisor.daemon.services",
    "supervisor.control.cli", "supervisor.control.server", "supervisor.control.handlers",
    "supervisor.probes.checkpoint", "supervisor.probes.vault", "supervisor.probes.gpu",
    "supervisor.probes.gpu_health", "supervisor.probes.gpu_probe", "supervisor.probes.nvml",
    "supervisor.jobs.spec", "supervisor.policy", "supervisor.store",
    "supervisor.process.executor", "supervisor.process.slurm_executor", "supervisor.process.slurm_watch",
]


def test_daemon_modules_do_not_import_training_code():
    code = (
        "import sys\n"
        f"for m in {DAEMON_MODULES!r}: __import__(m)\n"
        "from supervisor.jobs.spec import ultralytics_train_keys; ultralytics_train_keys()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics', 'torchvision'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"daemon imported: {out.stdout.strip()}"
