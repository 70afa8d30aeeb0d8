"""Notifications: tell a job's owner when it failed, is held or finished, through apprise.

Two halves, on two sides of the daemon's loop:

- ``Notifications.observe`` runs on the thread that recorded an event (the loop), once the
  event's row is committed (``Store.listeners``). It maps the row to a notification event
  (``notify_event``), picks the targets (``targets_for``), applies the rate limit to the noisy
  ones and builds the message (``build_notice``). No network I/O: it only puts the message on
  each target's queue.
- One ``TargetSender`` thread per target URL sends from its bounded queue, with a timeout per
  try and a few retries, then logs the failure. A target that is down holds up only its own
  queue; when the queue is full new messages for it are dropped (and logged), never waited for.

URLs are secrets (webhook tokens, topic names). They are never logged, shown or stored in
events: everything user-facing names a target by its ``label`` (where it is configured, its
scheme and a fingerprint), and what apprise says about a failure is redacted first.

apprise is imported on first use (``apprise_quiet.load_apprise``), not with this module. The
configuration models (``JobNotify``, ``NotifySettings``) live with the job model, in
``jobs/notify_spec.py``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import queue
import re
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence
from urllib.parse import parse_qsl, urlsplit

from supervisor.apprise_quiet import captured_warnings, load_apprise
from supervisor.jobs.notify_spec import JobNotify, NotifySettings, allowed_entry
from supervisor.observe.goodput import goodput
from supervisor.jobs.trackers import TrackerRecord

if TYPE_CHECKING:
    from supervisor.daemon.config import DaemonConfig
    from supervisor.jobs.spec import JobSpec
    from supervisor.store import Store
    from supervisor.store import AttemptRecord, EventRecord, JobRecord

RATE_LIMITED = frozenset({"restarted", "stalled"})  # one per crash: noisy in a crash loop
NOTIFY_TYPE = {"failed": "failure", "held": "warning", "completed": "success", "restarted": "warning",
               "stalled": "warning", "test": "info"}
SENDER_IDLE_S = 60.0     # a target's thread ends after this long with nothing to send
RETRY_BACKOFF_S = 1.0    # before the second try; doubled for each later one
CLOSE_DRAIN_S = 3.0      # on daemon stop, how long queued messages may still go out


@dataclass(frozen=True)
class Target:
    url: str
    label: str  # what logs and notify-test show instead of the URL
    allow_hosts: Optional[tuple[str, ...]] = None  # a job file's target: checked before each send; None: the admin's


# -- where a job file's targets may go ---------------------------------------------------
# URL types that never leave the host (desktop buses, the local syslog) or that store files.
LOCAL_SCHEMES = frozenset({"file", "dbus", "kde", "qt", "glib", "gnome", "windows", "macosx", "syslog",
                           "vapid", "blink1"})


def job_target_problems(urls: Sequence[str], allow_hosts: Sequence[str], resolve: bool) -> list[str]:
    """Why each of a job file's notification URLs may not be used (empty: all may). The root
    daemon sends them: they may not reach loopback, link-local or private addresses unless
    config.yaml's ``notify.allow_hosts`` names them, nor read local files. ``resolve``: look host
    names up too (may wait on DNS; never on the daemon's loop)."""
    problems = []
    for i, url in enumerate(urls):
        problem = job_target_problem(url, allow_hosts, resolve)
        if problem:
            problems.append(f"notify.urls[{i}]: {problem}")
    return problems


def job_target_problem(url: str, allow_hosts: Sequence[str], resolve: bool) -> Optional[str]:
    """``job_target_problems`` for one URL; the message never quotes the URL (a secret)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in LOCAL_SCHEMES:
        return f"'{scheme}://' does not go over the network; a job file's targets may not use it"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "not a URL the daemon can check"
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if value.startswith(("/", "~", ".", "file:")) or "/../" in value:
            return (f"its '{key.lstrip('+-:')}' parameter names a local file; a job file's targets may not read "
                    "the server's files (put such a target in config.yaml)")
    if not host or _host_allowed(host, (), allow_hosts):
        return None
    addresses = _literal(host)
    if addresses is None:
        if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            addresses = [ipaddress.ip_address("127.0.0.1")]
        elif resolve:
            addresses = resolve_host(host)
        else:
            addresses = []
    for address in addresses:
        if not _public(address) and not _host_allowed(host, [address], allow_hosts):
            return (f"host {host} is {address} ({_kind(address)}); the daemon sends a job file's notifications "
                    "only to public addresses unless config.yaml's notify.allow_hosts names the host")
    return None


def resolve_host(host: str) -> list:
    """Every address ``host`` resolves to; [] when it does not (many apprise URLs carry a token,
    not a host name, in the host position: the plugin talks to its service's fixed host)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    out = []
    for info in infos:
        try:
            out.append(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
        except ValueError:
            continue
    return out


def _literal(host: str):
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        return None


def _public(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_global and not address.is_multicast


def _kind(address) -> str:
    address = getattr(address, "ipv4_mapped", None) or address
    for kind in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "not public"


def _host_allowed(host: str, addresses: Sequence, allow_hosts: Sequence[str]) -> bool:
    for entry in map(allowed_entry, allow_hosts):
        if isinstance(entry, str):
            if host.lower().rstrip(".") == entry.rstrip("."):
                return True
        elif any(address in entry for address in addresses) or (
                _literal(host) and all(a in entry for a in _literal(host))):
            return True
    return False


def target_label(origin: str, index: int, url: str) -> str:
    """``config.yaml notify.urls[0] (json://…, #1a2b3c4d)``: identifies a target without its secret."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"{origin} notify.urls[{index}] ({scheme}://…, #{fingerprint(url)})"


def fingerprint(url: str) -> str:
    """The first 8 hex digits of the URL's SHA-256: ``printf %s URL | sha256sum`` finds it."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]


def targets_for(settings: "NotifySettings", job_notify: Optional[JobNotify]) -> tuple[list[Target], tuple[str, ...]]:
    """The targets and the events of one job: config.yaml's URLs plus the job's (a URL in both is
    one target); the job's ``on`` replaces config.yaml's."""
    targets = [Target(u, target_label("config.yaml", i, u)) for i, u in enumerate(settings.urls)]
    on: tuple[str, ...] = tuple(settings.on)
    if job_notify is not None:
        known = set(settings.urls)
        targets += [Target(u, target_label("job file", i, u), tuple(settings.allow_hosts))
                    for i, u in enumerate(job_notify.urls) if u not in known]
        if job_notify.on is not None:
            on = tuple(job_notify.on)
    return targets, on


# -- what an event means (pure) -------------------------------------------------------
def notify_event(kind: str, from_state: Optional[str], to_state: Optional[str],
                 attempt_cause: Optional[str]) -> Optional[str]:
    """The notification event an event row stands for, or None.

    ``restarted``: the job went to backoff because an attempt ended (a crash, a kill, a
    preemption); ``stalled``: an attempt ended because the daemon found it hung.
    """
    if kind == "state":
        if to_state in ("failed", "held", "completed"):
            return to_state
        if to_state == "backoff" and from_state in ("starting", "running", "stopping"):
            return "restarted"
    if kind == "exit" and attempt_cause == "stalled":
        return "stalled"
    return None


class RateLimit:
    """At most ``count`` noisy notifications per job in any ``per_s`` seconds; counts the rest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.sent: dict[str, deque[float]] = {}
        self.held_back: dict[str, int] = {}

    def allow(self, job: str, count: int, per_s: float) -> bool:
        now = self.clock()
        sent = self.sent.setdefault(job, deque())
        while sent and sent[0] <= now - per_s:
            sent.popleft()
        if len(sent) >= count:
            self.held_back[job] = self.held_back.get(job, 0) + 1
            return False
        sent.append(now)
        return True

    def take_held_back(self, job: str) -> int:
        """How many were held back since the last message that went out for ``job``."""
        return self.held_back.pop(job, 0)


@dataclass(frozen=True)
class Notice:
    job: str
    event: str
    title: str
    body: str

    @property
    def notify_type(self) -> str:
        return NOTIFY_TYPE.get(self.event, "info")


def build_notice(event: str, reason: str, job: "JobRecord", epochs: int, attempts: Sequence["AttemptRecord"],
                 now: float, host: str, held_back: int = 0) -> Notice:
    """The message: job, event, cause and detail, epochs, restarts, goodput, where to look further."""
    lines = [f"{job.name} {event}: {reason}"]
    ended = [a for a in attempts if a.ended_at is not None]
    if ended and ended[-1].cause:
        last = ended[-1]
        lines.append(f"attempt {last.number} ended: {last.cause}: {last.detail or ''}".rstrip(": "))
    done = epochs if job.state == "completed" else job.epochs_done
    restarts = max(0, job.attempts - 1)
    gp = goodput(job, attempts, now)
    share = "-" if gp.training_fraction is None else f"{gp.training_fraction * 100:.0f}%"
    by_cause = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in gp.restarts_by_cause.items())
    lines.append(f"epochs {done}/{epochs}, restarts {restarts}" + (f" ({by_cause})" if by_cause else "")
                 + f", goodput {share} of {_duration(gp.wall_s)}")
    lines += [f"{t}: run {r['id']}" + (f" {r['url']}" if r.get("url") else "")
              for t, r in TrackerRecord.load(job.trackers).runs().items()]
    if held_back:
        lines.append(f"({held_back} restarted/stalled notification(s) for this job held back by the rate limit)")
    lines.append(f"more: ssh {host} yolo-supervisorctl history {job.name}")
    return Notice(job.name, event, f"[{host}] {job.name}: {event}", "\n".join(lines))


def trial_notice(host: str, job: Optional[str]) -> Notice:
    what = f" for job {job}" if job else ""
    return Notice(job or "", "test", f"[{host}] yolo-supervisor test notification",
                  f"yolo-supervisor on {host}: test notification{what}. Notifications reach this target.")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


# -- the loop side ----------------------------------------------------------------------
class NotifyingDaemon(Protocol):
    """What ``Notifications`` uses of the daemon: named here so observe/ needs nothing from core.py."""

    store: "Store"
    config: "DaemonConfig"
    log: Any

    def spec(self, name: str) -> "JobSpec": ...


class Notifications:
    """Turns committed events into notifications; owned by the daemon, listening on its store."""

    def __init__(self, daemon: NotifyingDaemon, clock: Callable[[], float] = time.monotonic):
        self.daemon = daemon
        self.limit = RateLimit(clock)
        self.host = socket.gethostname()
        self._senders: dict[str, TargetSender] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        daemon.store.listeners.append(self.observe)

    @property
    def settings(self) -> NotifySettings:
        return self.daemon.config.notify

    def observe(self, ev: "EventRecord") -> None:
        """Store listener (the writer's thread, after commit): queue a notification if one is due."""
        try:
            self._observe(ev)
        except Exception as exc:  # a notification bug must never break recording an event
            self.daemon.log.error("notification not queued", job=ev.job, kind=ev.kind, error=repr(exc))

    def _observe(self, ev: "EventRecord") -> None:
        if ev.kind not in ("state", "exit"):
            return
        cause = None
        attempts = None
        if ev.kind == "exit":
            attempts = self.daemon.store.attempts(ev.job)
            cause = attempts[-1].cause if attempts else None
        event = notify_event(ev.kind, ev.from_state, ev.to_state, cause)
        if event is None:
            return
        spec = self.daemon.spec(ev.job)
        targets, on = targets_for(self.settings, spec.notify)
        if event not in on or not targets:
            return
        rate = self.settings.restart_rate
        if event in RATE_LIMITED and not self.limit.allow(ev.job, rate.count, rate.per_s):
            self.daemon.log.info("notification held back by the rate limit", job=ev.job, notify_event=event)
            return
        job = self.daemon.store.get_job(ev.job)
        attempts = attempts if attempts is not None else self.daemon.store.attempts(ev.job)
        notice = build_notice(event, ev.reason or "", job, spec.epochs, attempts, time.time(), self.host,
                              self.limit.take_held_back(ev.job))
        for target in targets:
            self.sender(target).put(Outgoing(notice, tries=1 + self.settings.retries))

    def test(self, name: Optional[str]) -> list[tuple[str, Future]]:
        """Queue a test message to every target of the daemon (and of job ``name``); one try each."""
        job_notify = self.daemon.spec(name).notify if name else None
        targets, _ = targets_for(self.settings, job_notify)
        notice = trial_notice(self.host, name)
        results = []
        for target in targets:
            item = Outgoing(notice, tries=1, result=Future())
            self.sender(target).put(item)
            results.append((target.label, item.result))
        return results

    def sender(self, target: Target) -> "TargetSender":
        with self._lock:
            sender = self._senders.get(target.url)
            if sender is None:
                sender = self._senders[target.url] = TargetSender(target, self)
            sender.label = target.label
            sender.target = target  # config.yaml's notify.allow_hosts as it is now (SIGHUP reload)
            return sender

    def close(self) -> None:
        """Daemon stop: let what is queued go out for a moment, then stop every sender."""
        deadline = time.monotonic() + CLOSE_DRAIN_S
        with self._lock:
            senders = list(self._senders.values())
        for sender in senders:
            sender.drain(deadline)
        self._closing.set()


# -- the sending side --------------------------------------------------------------------
@dataclass
class Outgoing:
    notice: Notice
    tries: int
    result: Optional[Future] = None  # notify-test waits on it: (ok, message)


@dataclass
class TargetSender:
    """One target's bounded queue and the thread that sends from it (started when needed)."""

    target: Target
    owner: Notifications
    label: str = ""
    _queue: "queue.Queue[Outgoing]" = field(init=False)
    _thread: Optional[threading.Thread] = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _plugin: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.label = self.label or self.target.label
        self._queue = queue.Queue(maxsize=self.owner.settings.queue_size)

    @property
    def log(self):
        return self.owner.daemon.log

    def put(self, item: Outgoing) -> bool:
        """Queue without waiting; a full queue drops the message (the target is down)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.log.warning("notification dropped: the target's queue is full", target=self.label,
                             job=item.notice.job, notify_event=item.notice.event)
            if item.result is not None:
                item.result.set_result((False, "not sent: this target's queue is full (it is down or slow)"))
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notify-sender", daemon=True)
                self._thread.start()
        return True

    def drain(self, deadline: float) -> None:
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded wait for the sender thread at daemon stop

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=SENDER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                ok, message = self._deliver(item)
            except Exception as exc:  # a bug in a plugin: report it, keep the thread
                ok, message = False, redact(f"internal error: {exc!r}", [self.target.url])
            if item.result is not None:
                item.result.set_result((ok, message))

    def _deliver(self, item: Outgoing) -> tuple[bool, str]:
        settings = self.owner.settings
        notice = item.notice
        message = "not sent"
        for attempt in range(item.tries):
            if attempt:
                if self.owner._closing.wait(RETRY_BACKOFF_S * 2 ** (attempt - 1)):
                    break
            ok, message = self._send_once(notice, settings.timeout_s)
            if ok:
                self.log.info("notification sent", target=self.label, job=notice.job, notify_event=notice.event,
                              tries=attempt + 1)
                return True, "sent"
        self.log.error("notification not sent", target=self.label, job=notice.job, notify_event=notice.event,
                       tries=item.tries, error=message)
        return False, message

    def _send_once(self, notice: Notice, timeout_s: float) -> tuple[bool, str]:
        if self.target.allow_hosts is not None:  # a job file's: its host is looked up again before each send
            problem = job_target_problem(self.target.url, self.target.allow_hosts, resolve=True)
            if problem:
                return False, f"not sent: {problem}"
        apprise = load_apprise()
        if self._plugin is None:
            self._plugin = apprise.Apprise.instantiate(self.target.url)
            if self._plugin is None:
                return False, "apprise cannot use this URL"
        self._plugin.socket_connect_timeout = self._plugin.socket_read_timeout = timeout_s
        with captured_warnings() as said:
            ok = bool(self._plugin.notify(body=notice.body, title=notice.title,
                                          notify_type=apprise.NotifyType(notice.notify_type)))
        why = said[-1] if said else "apprise reported a failure"
        return ok, "" if ok else redact(why, [self.target.url])


# -- keeping URLs out of logs ----------------------------------------------------------------
def secret_parts(url: str) -> list[str]:
    """Pieces of ``url`` that may be secret: all of it, its user and password, path segments,
    query values, and a host without a dot (Slack's first token is in the host position)."""
    pieces = {url}
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return [url]
    rest = url.split("://", 1)[-1]
    public = {host} if "." in host else set()
    query_keys = {kv.split("=", 1)[0] for kv in parts.query.split("&") if "=" in kv}
    for token in re.split(r"[/:@?&=#,;]", rest):
        if len(token) >= 3 and token not in public and token not in query_keys and not (
                token.isdigit() and len(token) <= 5):
            pieces.add(token)
    return sorted(pieces, key=len, reverse=True)


def redact(text: str, urls: Sequence[str]) -> str:
    for url in urls:
        for piece in secret_parts(url):
            text = text.replace(piece, "***")
    return text
