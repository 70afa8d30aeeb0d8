"""``yolo-supervisord``: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from supervisor.daemon.config import load_config
from supervisor.daemon.core import Daemon
from supervisor.daemon.services import Services
from supervisor.jobs.spec import SpecError
from supervisor.observe.logging import LEVELS, configure, get_logger
from supervisor.probes.gpu import open_probe
from supervisor.paths import Home, default_home
from supervisor.store import StoreCorrupt

EXIT_DAMAGED_STATE = 78  # EX_CONFIG: systemd does not restart on it (RestartPreventExitStatus)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="yolo-supervisord", description=__doc__)
    p.add_argument("--home", type=Path, default=None,
                   help="state directory (default $YOLO_SUPERVISOR_HOME, else a per-user directory)")
    p.add_argument("--job", type=Path, action="append", default=[], help="submit this job file at start")
    p.add_argument("--demo", action="store_true",
                   help="run the embedded demo: a CPU job on a generated dataset, killed once and resumed")
    p.add_argument("--log-level", default=None, type=str.lower, choices=LEVELS)
    return p.parse_args(argv)


def build_daemon(home: Home, log_level: str | None = None) -> Daemon:
    config = load_config(home.config)
    configure(log_level or config.log_level)
    # executor: slurm: the GPUs are on the compute nodes, not where the daemon runs; Slurm places jobs.
    probe = open_probe(lambda line: get_logger().warning(line)) if config.executor == "local" else None
    daemon = Daemon(home, config, gpu_probe=probe)
    return daemon


def install_signal_handlers(daemon: Daemon) -> None:
    """Handlers only set flags; the loop acts on them."""
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: setattr(daemon, "reload_requested", True))


# Everything the daemon makes is its user's alone unless made otherwise on purpose: the database
# holds secrets, and a job's files are its owner's (supervisor/paths.py opens the folders users need).
DAEMON_UMASK = 0o077


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.umask(DAEMON_UMASK)
    if args.demo:
        from supervisor.daemon.demo import run_demo

        return run_demo(args.home)
    home = Home(args.home or default_home()).ensure()
    try:
        daemon = build_daemon(home, args.log_level)
    except ValueError as err:
        print(f"yolo-supervisord: {err}", file=sys.stderr)
        return 2
    except StoreCorrupt as err:  # not a traceback, and no crash loop (RestartPreventExitStatus)
        print(f"yolo-supervisord: {err}", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    except OSError as err:  # e.g. root, but the per-thread identity switch does not work here
        print(f"yolo-supervisord: {err}", file=sys.stderr)
        return 1
    try:
        services = Services(daemon, args.log_level)
        services.start()  # control socket, drop directory watch, sd_notify, SIGHUP reload
    except (OSError, RuntimeError, ValueError) as err:
        print(f"yolo-supervisord: {err}", file=sys.stderr)
        return 1
    try:
        for job_file in args.job:
            try:
                daemon.submit(job_file.read_text(), source=str(job_file), actor="command line")
            except (SpecError, OSError) as err:
                print(f"yolo-supervisord: {err}", file=sys.stderr)
                return 2
        install_signal_handlers(daemon)
        get_logger().info("daemon started", home=str(home.root))
        daemon.run_forever()
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
