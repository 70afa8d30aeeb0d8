"""``yolo-supervisorctl``: talk to the daemon over its control socket.

Exit status: the table ``EXIT_STATUSES`` in supervisor/control/protocol.py (``--help`` prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from supervisor.control.protocol import (EXIT_CODES, one_line, Connection, ErrorCode, ProtocolError, Request, RequestError,
                                         connect)
from supervisor.child.drill import KINDS as DRILL_KINDS
from supervisor.control.protocol import exit_status_text
from supervisor.paths import HOME_ENV, Home, default_home
from supervisor.process.classify import signal_name

PROG = "yolo-supervisorctl"
SYSTEM_HOME = Path("/var/lib/yolo-supervisor")
FOLLOW_INTERVAL_S = 0.5
NOTIFY_TEST_TIMEOUT_S = 400.0
BAR_WIDTH = 20


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Control a running yolo-supervisord.",
                                epilog=f"exit status: {exit_status_text()}")
    p.add_argument("--home", type=Path, default=None,
                   help=f"the daemon's home (default ${HOME_ENV}, else the per-user home, else {SYSTEM_HOME})")
    p.add_argument("--socket", type=Path, default=None, help="control socket (default HOME/supervisor.sock)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("status", help="jobs: state, pid, epoch, speed, ETA, restarts, uptime, down time, goodput")
    s.add_argument("names", nargs="*", metavar="NAME")
    s.add_argument("--json", action="store_true", help="a JSON list of objects instead of a table")

    s = sub.add_parser("gpus", help="every GPU the daemon schedules: health, memory, utilization, job and pids")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("submit", help="add a job from a YAML file ('-' reads stdin)")
    s.add_argument("file")

    for name, text in (("stop", "TERM, grace period, KILL; the job stays stopped"),
                       ("start", "queue a stopped/failed/held job again; it resumes from its checkpoint"),
                       ("restart", "stop the running attempt and start a new one that resumes")):
        s = sub.add_parser(name, help=text)
        s.add_argument("name", metavar="NAME")
        if name == "stop":
            s.add_argument("--wait", action="store_true", help="return once the job is stopped")
            s.add_argument("--timeout", type=float, default=600.0, help="for --wait (seconds)")

    s = sub.add_parser("drill", help="inject one real fault into the job's running training, to see it recover")
    s.add_argument("name", metavar="NAME")
    s.add_argument("kind", choices=DRILL_KINDS, help="kill, term: a signal; oom, nan, hang: at the next "
                                                     "training step; corrupt: last.pt truncated after the next save")

    s = sub.add_parser("tail", help="the job's training log")
    s.add_argument("name", metavar="NAME")
    s.add_argument("-n", "--lines", type=int, default=10)
    s.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")

    s = sub.add_parser("history", help="goodput, every attempt (start, end, exit, cause, epochs, training and "
                                       "down time) and every event")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("plot", help="losses and mAP per epoch with every interruption marked (PNG)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("-o", "--output", type=Path, default=None, metavar="FILE.png", help="default ./NAME.png")

    s = sub.add_parser("events", help="the event stream of every job (or NAME): state changes, exits with "
                                      "causes, snapshots, holds; -f follows it like journalctl -f")
    s.add_argument("name", nargs="?", metavar="NAME")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen")
    s.add_argument("-n", "--lines", type=int, default=None,
                   help="only the newest N events first (default: all; 10 with -f)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")

    s = sub.add_parser("notify-test", help="send a test notification to every configured target (and NAME's) "
                                           "and print each target's result")
    s.add_argument("name", nargs="?", metavar="NAME")

    s = sub.add_parser("edit", help="change train arguments of a job with no process, from its next resume "
                                    "(data, workers, ...; batch, imgsz, GPU count need --force; lr0, model, "
                                    "epochs cannot change)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    s.add_argument("--force", action="store_true", help="accept a change of the training schedule")

    s = sub.add_parser("extend", help="train a completed, stopped or failed job on to N epochs in all, from its "
                                      "last resumable state (the learning-rate schedule is rebuilt for N)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--epochs", type=int, required=True, metavar="N")

    s = sub.add_parser("remove", help="forget a job that is not running (files are kept)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--purge", action="store_true", help="also delete HOME/jobs/NAME (logs, runs, checkpoints)")
    s = sub.add_parser("usage", help="GPU-hours per user and per job over a period, and those lost to "
                                     "restarts and redone work")
    s.add_argument("--since", default="30d", metavar="PERIOD", help="30d (default), 12h, 90m or seconds")
    s.add_argument("--json", action="store_true")

    sub.add_parser("web", help="print a URL that opens the web view as you (a one-use login link)")
    args = p.parse_args(argv)
    if (getattr(args, "lines", 0) or 0) < 0:
        p.error("-n must be 0 or more")
    return args


def socket_path(home: Optional[Path], explicit: Optional[Path]) -> Path:
    """--socket, else the socket named by HOME's config, else HOME/supervisor.sock.

    Without --home or $YOLO_SUPERVISOR_HOME the per-user home is tried first,
    then the system daemon's (what an SSH user on a shared server wants).
    """
    if explicit is not None:
        return explicit
    if home is None and not os.environ.get(HOME_ENV):
        own = _configured_socket(Home(default_home()))
        return own if own.exists() else _configured_socket(Home(SYSTEM_HOME))
    return _configured_socket(Home(home or default_home()))


def _configured_socket(home: Home) -> Path:
    try:
        configured = (yaml.safe_load(home.config.read_text()) or {}).get("socket")
    except (OSError, yaml.YAMLError, AttributeError):
        configured = None
    return Path(configured) if configured else home.socket


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = socket_path(args.home, args.socket)
    try:
        with connect(path) as conn:
            return COMMANDS[args.command](conn, args)
    except RequestError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_CODES[err.code]
    except ProtocolError as err:
        print(f"{PROG}: protocol error: {err}", file=sys.stderr)
        return 1
    except (ConnectionError, TimeoutError) as err:
        print(f"{PROG}: lost the connection to the daemon: {err}", file=sys.stderr)
        return EXIT_CODES[ErrorCode.NOT_RUNNING]
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed (e.g. piped into head)
        return 0


def call(conn: Connection, cmd: str, **args: Any) -> Any:
    return conn.request(Request(cmd, args)).unwrap()


# -- commands ----------------------------------------------------------------------
def cmd_status(conn: Connection, args: argparse.Namespace) -> int:
    jobs = call(conn, "status", names=args.names)
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        print(render_status(jobs, time.time()))
    return 0


def cmd_gpus(conn: Connection, args: argparse.Namespace) -> int:
    gpus = call(conn, "gpus")
    print(json.dumps(gpus, indent=2) if args.json else render_gpus(gpus))
    return 0


def cmd_submit(conn: Connection, args: argparse.Namespace) -> int:
    from supervisor.jobs.spec import MAX_SPEC_BYTES  # here: the spec model (pydantic) costs every command 0.3 s

    if args.file == "-":
        data, source = sys.stdin.buffer.read(MAX_SPEC_BYTES + 1), "stdin"
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as err:
            raise RequestError(ErrorCode.USAGE, f"{args.file}: {err.strerror}") from None
        source = os.path.basename(args.file)
    if len(data) > MAX_SPEC_BYTES:
        raise RequestError(ErrorCode.INVALID, f"{args.file}: over the {MAX_SPEC_BYTES} byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(ErrorCode.INVALID, f"{args.file}: not UTF-8 text ({err.reason} at byte {err.start})")
    job = call(conn, "submit", text=text, source=source)
    print(f"submitted {job['name']}: {job['state']}")
    return 0


def cmd_stop(conn: Connection, args: argparse.Namespace) -> int:
    job = call(conn, "stop", name=args.name)
    print(f"{job['name']}: {job['state']} ({job['state_reason']})")
    if args.wait and job["state"] != "stopped":
        deadline = time.monotonic() + args.timeout
        while job["state"] not in ("stopped", "completed", "failed"):
            if time.monotonic() > deadline:
                raise RequestError(ErrorCode.INTERNAL, f"{args.name}: still {job['state']} after {args.timeout:g}s")
            time.sleep(FOLLOW_INTERVAL_S)
            job = call(conn, "status", names=[args.name])[0]
        print(f"{job['name']}: {job['state']} ({job['state_reason']})")
    return 0


def cmd_start(conn: Connection, args: argparse.Namespace) -> int:
    job = call(conn, args.command, name=args.name)
    print(f"{job['name']}: {job['state']} ({job['state_reason']})")
    return 0


def cmd_drill(conn: Connection, args: argparse.Namespace) -> int:
    done = call(conn, "drill", name=args.name, kind=args.kind)
    print(f"{done['name']}: {done['what']}")
    return 0


def cmd_tail(conn: Connection, args: argparse.Namespace) -> int:
    out = sys.stdout
    first = call(conn, "tail", name=args.name, lines=args.lines)
    out.write(first["text"])
    out.flush()
    offset = first["offset"]
    while args.follow:
        chunk = call(conn, "log", name=args.name, offset=offset)
        if chunk["restarted"]:
            out.write(f"\n{PROG}: log truncated; following from its start\n")
        out.write(chunk["text"])
        out.flush()
        if chunk["offset"] == offset:
            time.sleep(FOLLOW_INTERVAL_S)
        offset = chunk["offset"]
    return 0


def cmd_history(conn: Connection, args: argparse.Namespace) -> int:
    hist = call(conn, "history", name=args.name)
    if args.json:
        print(json.dumps(hist, indent=2))
    else:
        print(render_history(hist))
    return 0


def cmd_edit(conn: Connection, args: argparse.Namespace) -> int:
    from supervisor.jobs.edit import EditRefused, parse_assignments  # as in cmd_submit

    try:
        values = parse_assignments(args.assignments)
    except EditRefused as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_CODES[ErrorCode.USAGE]
    done = call(conn, "edit", name=args.name, values=values, force=args.force)
    for key, (old, new) in done["changes"].items():
        print(f"{done['name']}: {key}: {old!r} -> {new!r} (from the next resume)")
    if not done["changes"]:
        print(f"{done['name']}: nothing changed")
    for warning in done["warnings"]:
        print(f"warning: {warning}")
    return 0


def cmd_extend(conn: Connection, args: argparse.Namespace) -> int:
    job = call(conn, "extend", name=args.name, epochs=args.epochs)
    print(f"{job['name']}: extended to {args.epochs} epochs; {job['state']}")
    return 0


def cmd_remove(conn: Connection, args: argparse.Namespace) -> int:
    done = call(conn, "remove", name=args.name, purge=args.purge)
    kept = "deleted" if done["purged"] else "kept"
    print(f"removed {done['name']} (files in {done['job_dir']} {kept})")
    return 0


def cmd_plot(conn: Connection, args: argparse.Namespace) -> int:
    hist = call(conn, "history", name=args.name)
    results = call(conn, "results", name=args.name)
    if not results["csv"]:
        raise RequestError(ErrorCode.WRONG_STATE, f"{args.name}: nothing to plot yet (no results.csv: "
                                                  "no epoch finished)")
    from supervisor.observe.plot import plot_run  # matplotlib: only this command pays for it

    out = args.output or Path(f"{args.name}.png")
    try:
        drawn = plot_run(results["csv"], hist, out)
    except OSError as err:
        raise RequestError(ErrorCode.USAGE, f"{out}: {err.strerror}") from None
    print(f"wrote {out}: {len(drawn.epochs)} epoch(s), {len(drawn.markers)} interruption(s)")
    return 0


def cmd_events(conn: Connection, args: argparse.Namespace) -> int:
    """All events (paged), or the newest ``-n``; with ``-f`` poll for new ones after the cursor."""
    last = args.lines if args.lines is not None else (10 if args.follow else None)
    query: dict[str, Any] = {"name": args.name} if args.name else {}
    page = call(conn, "events", **query, **({"last": last} if last is not None else {"after_id": 0}))
    while True:
        for event in page["events"]:
            print(json.dumps(event) if args.json else event_line(event))
        sys.stdout.flush()
        if not page["more"] and not args.follow:
            return 0
        if not page["more"]:
            time.sleep(FOLLOW_INTERVAL_S)
        page = call(conn, "events", **query, after_id=page["cursor"])


def event_line(e: dict[str, Any]) -> str:
    """``2026-12-01 21:10:00  coco  state running->backoff: attempt 1: killed: SIGKILL ... [uid 0 (root)]``."""
    # Reasons and actors carry text from outside (a file name, an exception, a user name): one line
    # each, control characters escaped, as `history` shows them; nobody forges lines of the stream.
    move = f" {one_line(e['from_state'] or '')}->{one_line(e['to_state'])}" if e["to_state"] else ""
    who = f" [{one_line(e['actor'])}]" if e["actor"] else ""
    return f"{clock(e['at'])}  {one_line(e['job'])}  {one_line(e['kind'])}{move}: {one_line(e['reason'] or '')}{who}"


def cmd_notify_test(conn: Connection, args: argparse.Namespace) -> int:
    conn.sock.settimeout(NOTIFY_TEST_TIMEOUT_S)  # the daemon answers once every target has answered
    results = call(conn, "notify-test", **({"name": args.name} if args.name else {}))
    for r in results:
        print(f"{r['target']}: {'ok' if r['ok'] else 'FAILED: ' + r['message']}")
    return 0 if all(r["ok"] for r in results) else 1


def cmd_usage(conn: Connection, args: argparse.Namespace) -> int:
    from supervisor.observe.usage import parse_period

    try:
        since = parse_period(args.since)
    except ValueError as err:
        raise RequestError(ErrorCode.USAGE, str(err)) from None
    report = call(conn, "usage", since_s=since)
    print(json.dumps(report, indent=2) if args.json else render_usage(report, args.since))
    return 0


def render_usage(report: dict[str, Any], since: str) -> str:
    """Per user, then per job: hours, GPU-hours and the GPU-hours restarts cost (sreport-like)."""
    def cells(row: dict[str, Any]) -> tuple[str, ...]:
        lost = "-" if row["lost_fraction"] is None else f"{row['lost_fraction'] * 100:.0f}%"
        return (f"{row['hours']:.2f}", f"{row['gpu_hours']:.2f}", f"{row['lost_hours']:.2f}",
                f"{row['lost_gpu_hours']:.2f}", lost, str(row["attempts"]), str(row["restarts"]))
    head = ("HOURS", "GPU-HOURS", "LOST H", "LOST GPU-H", "LOST", "ATTEMPTS", "RESTARTS")
    users = [("USER", *head)] + [(one_line(u["user"]), *cells(u)) for u in report["users"]]
    jobs = [("JOB", "USER", "STATE", *head)] + [(j["job"], one_line(j["user"]), j["state"], *cells(j))
                                                 for j in report["jobs"]]
    lines = [f"usage since {clock(report['since'])} (last {since}): {report['total']['gpu_hours']:.2f} GPU-hours, "
             f"{report['total']['lost_gpu_hours']:.2f} lost to restarts and redone work"]
    if not report["jobs"]:
        return lines[0] + "\nno attempt ran in this period"
    return "\n".join(lines + ["", table(users), "", table(jobs)])


def cmd_web(conn: Connection, args: argparse.Namespace) -> int:
    login = call(conn, "web-login")
    if login["url"]:
        print(login["url"])
        print(f"opens the web view as {login['user']}; the link works once, within {login['expires_s']:g} s")
    print(f"through SSH (as your SSH login, no link needed): ssh -L 8787:{login['socket']} HOST, "
          f"then open http://localhost:8787/")
    return 0


COMMANDS = {"status": cmd_status, "submit": cmd_submit, "stop": cmd_stop, "start": cmd_start,
            "restart": cmd_start, "tail": cmd_tail, "history": cmd_history, "remove": cmd_remove,
            "plot": cmd_plot, "events": cmd_events, "notify-test": cmd_notify_test, "edit": cmd_edit,
            "extend": cmd_extend, "gpus": cmd_gpus, "usage": cmd_usage, "web": cmd_web, "drill": cmd_drill}


# -- rendering ------------------------------------------------------------------------
WAITING_STATES = ("queued", "held", "backoff")


def render_status(jobs: list[dict[str, Any]], now: float) -> str:
    rows = [("NAME", "STATE", "GPUS", "PID", "EPOCH", "PROGRESS", "SPEED", "ETA", "RESTARTS", "LAST CAUSE",
             "UPTIME", "DOWN", "GOODPUT")]
    for j in jobs:
        j = with_slurm_cells(j)
        gp = j.get("goodput") or {}
        rows.append((j["name"], j["state"], j.get("gpus") or "-", str(j["pid"] or "-"),
                     f"{j['epoch']}/{j['epochs'] if j['epochs'] is not None else '?'}",
                     progress_bar(j), speed(j.get("batches_per_s")), duration(j.get("eta_s")),
                     restarts(j["restarts"], gp.get("restarts_by_cause")), j["last_cause"] or "-",
                     duration(j["uptime_s"]), duration(gp.get("down_s")), percent(gp.get("training_fraction"))))
    if not jobs:
        return "no jobs"
    # Why a job is not training (waiting for a GPU, held, backing off), one line each under the table.
    waiting = [f"  {j['name']}: {one_line(j['state_reason'])}" for j in jobs
               if j["state"] in WAITING_STATES and j.get("state_reason")] + slurm_waiting(jobs)
    return table(rows) + ("\n\n" + "\n".join(waiting) if waiting else "")


def with_slurm_cells(job: dict[str, Any]) -> dict[str, Any]:
    """executor: slurm: the PID column shows ``slurm:JOBID@NODE``, and a job whose Slurm job waits
    for an allocation is shown ``queued`` (its state is ``starting``: the job is submitted)."""
    slurm = job.get("slurm")
    if not slurm:
        return job
    shown = dict(job, pid=f"slurm:{slurm['job_id']}" + (f"@{slurm['node']}" if slurm.get("node") else ""))
    if slurm.get("state") == "PENDING":
        shown["state"] = "queued"
    return shown


def slurm_waiting(jobs: list[dict[str, Any]]) -> list[str]:
    """executor: slurm: one line per job waiting in Slurm's queue, with its job id and Slurm's reason."""
    lines = [f"  {j['name']}: Slurm job {j['slurm']['job_id']} pending ({j['slurm'].get('reason') or 'no reason given'})"
             for j in jobs if (j.get("slurm") or {}).get("state") == "PENDING"]
    warning = next((j["slurm"]["warning"] for j in jobs if (j.get("slurm") or {}).get("warning")), None)
    return lines + ([f"  warning: {warning}"] if warning else [])  # one line: it is about Slurm, not a job


def render_gpus(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "no GPUs (none seen by NVML and none listed under `gpus` in config.yaml)"
    rows = [("GPU", "HEALTH", "MEMORY", "UTIL", "JOB", "PIDS")]
    for g in gpus:
        memory = "-" if g["memory_used_mib"] is None else f"{g['memory_used_mib']}/{g['memory_total_mib']} MiB"
        util = "-" if g["utilization_pct"] is None else f"{g['utilization_pct']}%"
        health = g["health"] if not g["problems"] else f"{g['health']}: {'; '.join(g['problems'])}"
        pids = ", ".join(f"{pid} ({mib} MiB)" for pid, mib in g["pids"].items()) or "-"
        rows.append((str(g["index"]), health, memory, util, g["job"] or "-", pids))
    return table(rows)


def speed(batches_per_s: Optional[float]) -> str:
    if batches_per_s is None:
        return "-"
    return f"{batches_per_s:.2f} it/s" if batches_per_s >= 1 else f"{1 / batches_per_s:.1f} s/it"


def restarts(count: int, by_cause: Optional[dict[str, int]]) -> str:
    """``3 (killed x2, preempted)``."""
    if not count or not by_cause:
        return str(count)
    return f"{count} (" + ", ".join(c if n == 1 else f"{c} x{n}" for c, n in by_cause.items()) + ")"


def percent(fraction: Optional[float]) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def progress_bar(job: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """Epochs done plus the fraction of the epoch under way."""
    if job["epochs"] is None:
        return "(job spec no longer valid: see status --json)"
    epochs = max(1, job["epochs"])
    done = float(job["epoch"] if job["state"] == "completed" else job["epochs_done"])
    if job.get("batches") and job.get("batch") is not None and job["epoch"] > job["epochs_done"]:
        done = job["epoch"] - 1 + min(1.0, job["batch"] / job["batches"])
    fraction = max(0.0, min(1.0, done / epochs))
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%"


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s < 86400 else f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_history(hist: dict[str, Any]) -> str:
    job = hist["job"]
    lines = [f"job {job['name']}: {job['state']} ({one_line(job['state_reason'] or '')})"]
    if hist.get("goodput"):
        lines.append(render_goodput(hist["goodput"]))
    for tracker, run in (job.get("trackers") or {}).items():
        lines.append(f"{tracker}: run {run['id']}" + (f"  {run['url']}" if run.get("url") else ""))
    lines.append("")
    rows = [("ATTEMPT", "START", "END", "PID", "GPUS", "EXIT", "CAUSE", "EPOCHS", "TRAINING", "DOWN AFTER",
             "REDONE", "DETAIL")]
    for a in hist["attempts"]:
        if a["ended_at"] is None:
            ended = "-"
        elif a["signal"] is not None:
            ended = signal_name(a["signal"])
        else:
            ended = f"exit {a['exit_code']}" if a["exit_code"] is not None else "unknown"
        start = f"{a['epochs_before']}+{a['batch_before']}b" if a.get("batch_before") else str(a["epochs_before"])
        epochs = f"{start}->{a['epochs_after'] if a['epochs_after'] is not None else '?'}"
        where = str(a["pid"] or "-")
        if a.get("slurm_job_id"):  # executor: slurm
            where = f"slurm:{a['slurm_job_id']}" + (f"@{a['slurm_node']}" if a.get("slurm_node") else "")
        rows.append((str(a["number"]), clock(a["started_at"]), clock(a["ended_at"]), where,
                     a.get("devices") or "-", ended, a["cause"] or "(running)", epochs, duration(a.get("training_s")),
                     duration(a.get("down_after_s")) if a["ended_at"] else "-", redone(a),
                     one_line(a["detail"] or "")))
    lines.append(table(rows) if hist["attempts"] else "no attempts yet")
    lines += ["", "events:"]
    for e in hist["events"]:
        move = f" {e['from_state'] or ''}->{e['to_state']}" if e["to_state"] else ""
        who = f" [{one_line(e['actor'])}]" if e["actor"] else ""
        lines.append(f"  {clock(e['at'])}  {e['kind']}{move}: {one_line(e['reason'] or '')}{who}")
    return "\n".join(lines)


def redone(a: dict[str, Any]) -> str:
    """``1 ep / 240 b``: whole epochs and batches an attempt trained a second time."""
    if "epochs_redone" not in a:
        return "-"
    return f"{a['epochs_redone']} ep / {a.get('batches_redone', 0)} b"


def render_goodput(gp: dict[str, Any]) -> str:
    """``goodput: wall 1h02m = training 55m01s (89%) + startup 1m10s + down 5m49s + paused 0m00s; ...``"""
    return (f"goodput: wall {duration(gp['wall_s'])} = training {duration(gp['training_s'])} "
            f"({percent(gp['training_fraction'])}) + startup {duration(gp['startup_s'])} + down "
            f"{duration(gp['down_s'])} + paused {duration(gp['paused_s'])}; epochs redone {gp['epochs_redone']} "
            f"(batches {gp.get('batches_redone', 0)}); "
            f"restarts {restarts(gp['restarts'], gp['restarts_by_cause'])}")


def clock(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":
    sys.exit(main())
