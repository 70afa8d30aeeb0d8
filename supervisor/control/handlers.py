"""Daemon-side handlers: one small function per control request.

``dispatch`` parses the request's arguments into the handler's typed request
(supervisor/control/requests.py) on the connection's thread, then runs the
handler on the daemon's loop thread (through ``Daemon.call``), so it may read
and change job state like any other step of the loop. A handler returns plain
JSON-able data or raises ``RequestError``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Optional

from supervisor import safefs
from supervisor.control import authz
from supervisor.control.peer import actor_for_uid, database_groups, group_id
from supervisor.control.protocol import LOG_CHUNK_BYTES, ErrorCode, Request, RequestError
from supervisor.control.requests import (ControlRequest, DrillRequest, EditRequest, EventsRequest, ExtendRequest,
                                         JobRequest, LogRequest, MaybeJobRequest, NoArguments, RemoveRequest,
                                         StatusRequest, SubmitRequest, TailRequest, UsageRequest)
from supervisor.daemon.core import CommandError, PurgeFailed
from supervisor.jobs.edit import EditRefused
from supervisor.jobs.spec import SpecError, parse_spec_text
from supervisor.observe.notify import job_target_problems
from supervisor.observe.goodput import goodput
from supervisor.observe.usage import usage
from supervisor.observe.views import (JOB_TEXT, LISTING_TEXT, cut_long_strings, gpu_views,  # noqa: F401
                                      job_view, job_views)  # status's views; job_view also imported from here
from supervisor.store import JobRecord

if TYPE_CHECKING:
    from supervisor.control.peer import Peer
    from supervisor.daemon.core import Daemon

# results.csv grows ~200 bytes an epoch: thousands of epochs, under the message limit once escaped.
RESULTS_MAX_BYTES = 512 * 1024
HandlerFn = Callable[["Daemon", Any, "Peer"], Any]  # (daemon, an instance of its ``request``, peer)


@dataclass(frozen=True)
class Handler:
    fn: HandlerFn
    request: type[ControlRequest]  # the command's arguments, parsed before the loop sees them
    mutates: bool  # only root, the daemon's user and the socket group may call it
    # Only the job's owner and the admins (supervisor/control/authz.py); without a name, admins only.
    acts_on_job: bool = False
    # Checks that may wait on the network (a notification host's name): run on the connection's
    # thread before the handler, never on the loop.
    precheck: Optional[Callable[["Daemon", Any, "Peer"], None]] = None


@dataclass(frozen=True)
class Deferred:
    """A handler's answer that takes time (a network send): ``wait`` runs on the connection's
    thread after the handler returned, so the loop is not held up."""

    wait: Callable[[], Any]


def dispatch(daemon: "Daemon", req: Request, peer: "Peer", timeout: float = 30.0) -> Any:
    """Run the request's handler on the loop thread; errors come back as ``RequestError``."""
    handler = HANDLERS.get(req.cmd)
    if handler is None:
        raise RequestError(ErrorCode.USAGE, f"unknown command {req.cmd!r}")
    request = handler.request.from_args(req.args)  # here: a bad argument is refused without the loop
    groups = peer_groups(peer) if handler.acts_on_job else frozenset()  # the group database: off the loop

    def run() -> Any:
        if handler.acts_on_job:  # on the loop: the job cannot change hands between the check and the act
            authorize_job(daemon, req.cmd, getattr(request, "name", None), peer, groups)
        return handler.fn(daemon, request, peer)
    try:
        if handler.precheck is not None:
            handler.precheck(daemon, request, peer)
        result = daemon.call(run, timeout=timeout)
        return result.wait() if isinstance(result, Deferred) else result
    except RequestError:
        raise
    except SpecError as err:
        raise RequestError(ErrorCode.INVALID, str(err)) from None
    except CommandError as err:
        raise RequestError(ErrorCode.WRONG_STATE, str(err)) from None
    except TimeoutError as err:
        raise RequestError(ErrorCode.INTERNAL, str(err)) from None


# -- who may act on a job ------------------------------------------------------
def peer_groups(peer: "Peer") -> frozenset[int]:
    """Every group the peer is in: the kernel's word at connect time and the group database's."""
    return frozenset({peer.gid, *peer.groups, *database_groups(peer.uid)})


def admin_gid(group: Optional[str]) -> Optional[int]:
    """config.yaml's ``admin_group`` as a gid (None: none configured, or no such group any more)."""
    try:
        return group_id(group)
    except KeyError:
        return None


def authorize_job(daemon: "Daemon", cmd: str, name: Optional[str], peer: "Peer", groups: AbstractSet[int]) -> None:
    """``RequestError(PERMISSION)`` unless the peer owns job ``name`` (None: no job named) or is an
    admin (exit 6)."""
    daemon_uid, gid = os.geteuid(), admin_gid(daemon.config.admin_group)
    if name is None:
        if authz.is_admin(peer.uid, groups, daemon_uid, gid):
            return
        owner = None
    else:
        job = daemon.store.get_job(name)
        if job is None:
            return  # the handler says there is no such job
        if authz.may_act_on_job(peer.uid, groups, job.owner_uid, daemon_uid, gid):
            return
        owner = actor_for_uid(authz.job_owner(job.owner_uid, daemon_uid))
    daemon.log.warning("control request refused", cmd=cmd, actor=peer.actor, job=name, owner=owner)
    raise RequestError(ErrorCode.PERMISSION, authz.refusal(cmd, name, owner, peer.actor, daemon.config.admin_group))


# -- the job a request names ---------------------------------------------------------
def _job(daemon: "Daemon", name: str) -> JobRecord:
    job = daemon.store.get_job(name)
    if job is None:
        raise RequestError(ErrorCode.UNKNOWN_JOB, f"no job named '{name}'")
    return job


# -- read-only requests ----------------------------------------------------------
STATUS_PAGE = 1000     # jobs rendered per turn of the loop in a listing of every job (about 0.1 s)


def status(daemon: "Daemon", request: StatusRequest, peer: "Peer") -> Any:
    """Every job (or the named ones) with its state, progress and restart count. A listing of every
    job is rendered a page at a time, each page one short turn on the loop (10,000 jobs must not
    hold it for seconds), and its long strings are cut; a named job's view shows them whole."""
    if request.names:
        return job_views(daemon, [_job(daemon, n) for n in request.names], text_limit=JOB_TEXT)
    return Deferred(lambda: _every_view(daemon))


def _every_view(daemon: "Daemon") -> list[dict[str, Any]]:
    """Runs on the connection's thread: asks the loop for one page after another."""
    views: list[dict[str, Any]] = []
    after: Optional[tuple[float, str]] = None
    now = time.time()
    while True:
        page = daemon.call(lambda: _view_page(daemon, after, now))
        views += page[0]
        if page[1] is None:
            return views
        after = page[1]


def _view_page(daemon: "Daemon", after: Optional[tuple[float, str]], now: float):
    """(the views of the STATUS_PAGE jobs after ``after``, the key to go on from; None at the end)."""
    jobs = daemon.store.list_jobs(after=after, limit=STATUS_PAGE)
    last = (jobs[-1].created_at, jobs[-1].name) if len(jobs) == STATUS_PAGE else None
    return job_views(daemon, jobs, now), last


def gpus(daemon: "Daemon", request: NoArguments, peer: "Peer") -> list[dict[str, Any]]:
    """Every GPU of the daemon's inventory: health, memory, utilization, the job and pids on it."""
    return gpu_views(daemon)


def history(daemon: "Daemon", request: JobRequest, peer: "Peer") -> dict[str, Any]:
    """Every attempt of a job (with its goodput share) and every event, oldest first."""
    job = _job(daemon, request.name)
    now = time.time()
    events = [_event_row(e) for e in daemon.store.events(job.name)]
    attempts = daemon.store.attempts(job.name)
    gp = goodput(job, attempts, now)
    rows = []
    for a, share in zip(attempts, gp.attempts):
        row = dataclasses.asdict(a)
        row.update(training_s=round(share.training_s, 1), down_after_s=round(share.down_after_s, 1),
                   epochs_reached=share.epochs_reached, epochs_redone=share.epochs_redone,
                   batches_redone=share.batches_redone)
        rows.append(cut_long_strings(row, EVENT_TEXT))
    return {"job": cut_long_strings(job_view(daemon, job, now, attempts), JOB_TEXT), "attempts": rows,
            "events": events, "goodput": gp.to_dict()}


def results(daemon: "Daemon", request: JobRequest, peer: "Peer") -> dict[str, Any]:
    """The run's results.csv (what ``plot`` draws), read through the socket like the log."""
    job = _job(daemon, request.name)
    text = None
    if job.run_dir:
        path = Path(job.run_dir) / "results.csv"
        try:
            with daemon.as_owner(job.name):  # read as the job's user: a link in their folder gets nothing
                data = safefs.read_regular(path, RESULTS_MAX_BYTES + 1)
        except FileNotFoundError:
            data = None
        except OSError as err:
            raise RequestError(ErrorCode.INTERNAL, f"{path}: not read: {err.strerror or err}") from None
        if data is not None and len(data) > RESULTS_MAX_BYTES:
            raise RequestError(ErrorCode.INTERNAL, f"{path}: over the {RESULTS_MAX_BYTES} byte limit")
        text = data.decode("utf-8", errors="replace") if data is not None else None
    return {"name": job.name, "run_dir": job.run_dir, "csv": text}


def tail(daemon: "Daemon", request: TailRequest, peer: "Peer") -> dict[str, Any]:
    """The last ``lines`` lines of the job's log and the offset to follow from."""
    job = _job(daemon, request.name)
    with _reading_log(daemon, job):
        text, offset = read_last_lines(daemon.home.job_log(job.name), request.lines)
    return {"text": text, "offset": offset, "state": job.state}


def log(daemon: "Daemon", request: LogRequest, peer: "Peer") -> dict[str, Any]:
    """Log text written after ``offset`` (``tail -f``); starts over when the file was truncated."""
    job = _job(daemon, request.name)
    with _reading_log(daemon, job):
        text, new_offset, restarted = read_from(daemon.home.job_log(job.name), request.offset)
    return {"text": text, "offset": new_offset, "restarted": restarted, "state": job.state}


@contextlib.contextmanager
def _reading_log(daemon: "Daemon", job: JobRecord):
    """The log is read as the job's user and never through a link: the folder is theirs, and
    ``tail`` is open to anyone who can connect."""
    try:
        with daemon.as_owner(job.name):
            yield
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise RequestError(ErrorCode.INTERNAL, f"{daemon.home.job_log(job.name)}: not read: "
                           f"{err.strerror or err}") from None


EVENTS_PER_RESPONSE = 500  # well under the message limit, reasons being one line each


def events(daemon: "Daemon", request: EventsRequest, peer: "Peer") -> dict[str, Any]:
    """Events of every job (or one), oldest first: those after ``after_id``, else the ``last`` N
    newest (all of them when neither is given); ``cursor`` is the id to follow from."""
    name = _job(daemon, request.name).name if request.name is not None else None
    if request.after_id is not None or request.last is None:
        after = request.after_id or 0
        rows = daemon.store.events_after(after, name, EVENTS_PER_RESPONSE)
        more = len(rows) == EVENTS_PER_RESPONSE
    else:
        after = daemon.store.last_event_id()
        rows = daemon.store.latest_events(min(request.last, EVENTS_PER_RESPONSE), name)
        more = False
    return {"events": [_event_row(e) for e in rows], "cursor": rows[-1].id if rows else after, "more": more}


def _event_row(e) -> dict[str, Any]:
    """An event as listed: long values (an edit of a 600 KB value, a reason naming a long path) cut."""
    row = dataclasses.asdict(e)
    row["data"] = json.loads(e.data) if e.data else None
    return cut_long_strings(row, EVENT_TEXT)


EVENT_TEXT = 2048  # characters of one value of an event in a listing


NOTIFY_TEST_WAIT_S = 330.0  # the longest a single try may take (timeout_s <= 300), and some


def notify_test(daemon: "Daemon", request: MaybeJobRequest, peer: "Peer") -> Deferred:
    """Send a test message to the daemon's targets (and job NAME's); each target's result."""
    name = _job(daemon, request.name).name if request.name is not None else None
    sent = daemon.notifications.test(name)
    if not sent:
        where = "config.yaml" + (f" or {name}'s job file" if name else "")
        raise RequestError(ErrorCode.WRONG_STATE, f"no notification targets: set notify.urls in {where}")
    daemon.log.info("test notification", actor=peer.actor, job=name, targets=[label for label, _ in sent])
    wait_s = min(NOTIFY_TEST_WAIT_S, daemon.config.notify.timeout_s + 30)

    def results() -> list[dict[str, Any]]:
        out = []
        for label, fut in sent:
            try:
                ok, message = fut.result(timeout=wait_s)
            except concurrent.futures.TimeoutError:
                ok, message = False, f"no result within {wait_s:g}s (earlier messages still queued for it)"
            out.append({"target": label, "ok": ok, "message": message})
        return out
    return Deferred(results)


# -- mutating requests -------------------------------------------------------------
def submit(daemon: "Daemon", request: SubmitRequest, peer: "Peer") -> dict[str, Any]:
    """Add a job from the text of a job file; the training runs as the submitting user."""
    owner = (peer.uid, peer.gid)  # the job is the submitter's (who may act on it; as root, who it runs as)
    spec = daemon.submit(request.text, source=f"cli:{request.source}", actor=peer.actor, owner=owner)
    daemon.start_due_jobs()
    return job_view(daemon, daemon.store.get_job(spec.name))


def check_notify_hosts(daemon: "Daemon", request: SubmitRequest, peer: "Peer") -> None:
    """The job file's notification hosts, resolved (this may wait on DNS, so not on the loop): a
    target that reaches a loopback, link-local or private address is refused at submit."""
    try:
        spec = parse_spec_text(request.text, "(notify check)")
    except SpecError:
        return  # the handler reports the problems, with the job file's name
    if spec.notify is None:
        return
    problems = job_target_problems(spec.notify.urls, daemon.config.notify.allow_hosts, resolve=True)
    if problems:
        raise SpecError(request.source, problems)


def stop(daemon: "Daemon", request: JobRequest, peer: "Peer") -> dict[str, Any]:
    """TERM, grace, KILL for a running job; a job that waits to start is stopped at once."""
    job = _job(daemon, request.name)
    daemon.stop_job(job.name, peer.actor)
    return job_view(daemon, daemon.store.get_job(job.name))


def start(daemon: "Daemon", request: JobRequest, peer: "Peer") -> dict[str, Any]:
    """Queue a stopped, failed or held job again; it resumes from its checkpoint."""
    job = _job(daemon, request.name)
    daemon.start_job(job.name, peer.actor)
    return job_view(daemon, daemon.store.get_job(job.name))


def restart(daemon: "Daemon", request: JobRequest, peer: "Peer") -> dict[str, Any]:
    """Stop the running attempt and start a new one that resumes; start a job that is not running."""
    job = _job(daemon, request.name)
    daemon.restart_job(job.name, peer.actor)
    return job_view(daemon, daemon.store.get_job(job.name))


def drill(daemon: "Daemon", request: DrillRequest, peer: "Peer") -> dict[str, Any]:
    """Inject one real fault into a running job's training; it acts on the job as stop/restart do."""
    job = _job(daemon, request.name)
    what = daemon.drill_job(job.name, request.kind, peer.actor)
    return {"name": job.name, "kind": request.kind, "what": what, "state": daemon.store.get_job(job.name).state}


def edit(daemon: "Daemon", request: EditRequest, peer: "Peer") -> dict[str, Any]:
    """Change train arguments of a job with no process; refused keys come back as a usage error."""
    job = _job(daemon, request.name)
    try:
        change = daemon.edit(job.name, request.values, request.force, peer.actor)
    except EditRefused as err:
        raise RequestError(ErrorCode.USAGE, f"{job.name}: {err}") from None
    except SpecError as err:
        raise RequestError(ErrorCode.INVALID, "; ".join(err.problems)) from None
    except CommandError as err:
        raise RequestError(ErrorCode.WRONG_STATE, str(err)) from None
    return {"name": job.name, "changes": {k: [old, new] for k, (old, new) in change.changes.items()},
            "warnings": change.warnings, "state": daemon.store.get_job(job.name).state}


def extend(daemon: "Daemon", request: ExtendRequest, peer: "Peer") -> dict[str, Any]:
    """Train a finished job further, to ``epochs`` in all."""
    job = _job(daemon, request.name)
    try:
        daemon.extend(job.name, request.epochs, peer.actor)
    except CommandError as err:
        raise RequestError(ErrorCode.WRONG_STATE, str(err)) from None
    return job_view(daemon, daemon.store.get_job(job.name))


def remove(daemon: "Daemon", request: RemoveRequest, peer: "Peer") -> dict[str, Any]:
    """Forget a job that has no process; its files stay unless ``purge``."""
    job = _job(daemon, request.name)
    done = daemon.remove_job(job.name, request.purge, peer.actor)  # the purge runs on a worker
    answer = {"name": job.name, "purged": request.purge, "job_dir": str(daemon.home.job_dir(job.name))}

    def wait() -> dict[str, Any]:
        try:
            done.result()
        except PurgeFailed as err:  # not the job's state: the daemon could not do it (a wrong state maps below)
            raise RequestError(ErrorCode.INTERNAL, str(err)) from None
        return answer
    return Deferred(wait)


HANDLERS: dict[str, Handler] = {
    "status": Handler(status, StatusRequest, mutates=False),
    "history": Handler(history, JobRequest, mutates=False),
    "gpus": Handler(gpus, NoArguments, mutates=False),
    # The job's files (its folder is its owner's alone): read for its owner and the admins.
    "results": Handler(results, JobRequest, mutates=False, acts_on_job=True),
    "tail": Handler(tail, TailRequest, mutates=False, acts_on_job=True),
    "log": Handler(log, LogRequest, mutates=False, acts_on_job=True),
    "events": Handler(events, EventsRequest, mutates=False),
    "notify-test": Handler(notify_test, MaybeJobRequest, mutates=True, acts_on_job=True),  # sends to real targets
    "submit": Handler(submit, SubmitRequest, mutates=True, precheck=check_notify_hosts),
    "stop": Handler(stop, JobRequest, mutates=True, acts_on_job=True),
    "start": Handler(start, JobRequest, mutates=True, acts_on_job=True),
    "restart": Handler(restart, JobRequest, mutates=True, acts_on_job=True),
    "drill": Handler(drill, DrillRequest, mutates=True, acts_on_job=True),
    "remove": Handler(remove, RemoveRequest, mutates=True, acts_on_job=True),
    "edit": Handler(edit, EditRequest, mutates=True, acts_on_job=True),
    "extend": Handler(extend, ExtendRequest, mutates=True, acts_on_job=True),
}


# -- usage and the web view (issue 24) ------------------------------------------------
def usage_report(daemon: "Daemon", request: UsageRequest, peer: "Peer") -> dict[str, Any]:
    """GPU-hours per user and per job over the last ``since_s`` seconds, and those lost to restarts."""
    now = time.time()
    daemon_uid = os.geteuid()
    return usage(daemon.store.list_jobs(), daemon.store.attempts, now - request.since_s, now,
                 lambda job: actor_for_uid(daemon_uid if job.owner_uid is None else job.owner_uid))


def web_login(daemon: "Daemon", request: NoArguments, peer: "Peer") -> dict[str, Any]:
    """A one-use login token for the web view, bound to the uid this socket's peer has."""
    web = getattr(daemon, "web", None)
    if web is None:
        raise RequestError(ErrorCode.WRONG_STATE, "the web view is off: set web: {listen: 127.0.0.1:8787} in "
                                                  "config.yaml and restart the daemon")
    return web.login_info(peer)


HANDLERS["usage"] = Handler(usage_report, UsageRequest, mutates=False)
HANDLERS["web-login"] = Handler(web_login, NoArguments, mutates=False)  # a reader's login; acting is checked per action


# -- reading the log ---------------------------------------------------------------
def read_last_lines(path: Path, lines: int, limit: int = LOG_CHUNK_BYTES) -> tuple[str, int]:
    """The last ``lines`` lines (at most ``limit`` bytes) and the file's size."""
    try:
        with os.fdopen(safefs.open_regular(path), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - limit)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", 0
    if lines == 0:
        return "", size
    cut = len(data)
    for _ in range(lines + (1 if data.endswith(b"\n") else 0)):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    return data[cut + 1:].decode("utf-8", errors="replace"), size


def read_from(path: Path, offset: int, limit: int = LOG_CHUNK_BYTES) -> tuple[str, int, bool]:
    """(text after ``offset``, next offset, whether the file shrank and was read from the start)."""
    try:
        with os.fdopen(safefs.open_regular(path), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            restarted = size < offset
            offset = 0 if restarted else offset
            f.seek(offset)
            data = _whole_characters(f.read(limit))
    except FileNotFoundError:
        return "", 0, offset > 0
    return data.decode("utf-8", errors="replace"), offset + len(data), restarted


def _whole_characters(data: bytes) -> bytes:
    """Drop a UTF-8 sequence cut at the end of ``data``; the next read starts with it."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data[:-back] if back < needed else data
        return data
    return data
