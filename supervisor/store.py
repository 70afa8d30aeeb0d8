"""Persistent state in SQLite (WAL): jobs, attempts and events.

Only plain values are stored; process handles live in the daemon's memory and
are rebuilt on start by reconciliation, never serialised.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    spec_yaml TEXT NOT NULL,
    source TEXT,
    state TEXT NOT NULL,
    state_reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner_uid INTEGER,
    owner_gid INTEGER,
    run_dir TEXT,
    pid INTEGER,
    pid_start_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    crash_restarts INTEGER NOT NULL DEFAULT 0,
    no_progress_streak INTEGER NOT NULL DEFAULT 0,
    backoff_level INTEGER NOT NULL DEFAULT 0,
    next_start_at REAL,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    last_cause TEXT,
    batch_override INTEGER
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    pid INTEGER,
    pid_start_time REAL,
    exit_code INTEGER,
    signal INTEGER,
    cause TEXT,
    detail TEXT,
    epochs_before INTEGER NOT NULL DEFAULT 0,
    epochs_after INTEGER,
    resumed_from TEXT,
    first_batch_at REAL,
    epochs_reached INTEGER,
    UNIQUE (job, number)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    reason TEXT,
    actor TEXT,
    data TEXT
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job, number);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS events_job ON events (job, id);
"""

# Columns added after the first release: (table, column, type). A database made by an older
# version gets them on open; nothing else about it changes.
ADDED_COLUMNS = (
    ("attempts", "epochs_reached", "INTEGER"),
    ("attempts", "batch_before", "INTEGER"),
    ("attempts", "batches_reached", "INTEGER"),
    ("attempts", "batches_per_epoch", "INTEGER"),
    ("jobs", "extend_pending", "INTEGER"),
    ("attempts", "stop_cause", "TEXT"),
    ("attempts", "stop_detail", "TEXT"),
    ("attempts", "stop_by_user", "INTEGER"),
    ("attempts", "stop_then", "TEXT"),
    ("attempts", "kill_at", "REAL"),
    ("jobs", "devices", "TEXT"),
    ("attempts", "devices", "TEXT"),
    ("attempts", "slurm_job_id", "TEXT"),
    ("attempts", "slurm_node", "TEXT"),
    ("jobs", "slurm_job_id", "TEXT"),
    ("jobs", "setup_failures", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "preempt_streak", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "trackers", "TEXT"),
)


@dataclass
class JobRecord:
    name: str
    spec_yaml: str
    source: Optional[str]
    state: str
    state_reason: Optional[str]
    created_at: float
    updated_at: float
    owner_uid: Optional[int]
    owner_gid: Optional[int]
    run_dir: Optional[str]
    pid: Optional[int]
    pid_start_time: Optional[float]
    attempts: int
    crash_restarts: int
    no_progress_streak: int
    backoff_level: int
    next_start_at: Optional[float]
    epochs_done: int
    last_cause: Optional[str]
    batch_override: Optional[int]
    # Set by `extend` until the next attempt starts: its stripped last.pt does not mean "finished".
    extend_pending: Optional[int] = None
    # The GPUs the job trains on ("2,3"), chosen at its first launch; every later attempt uses them.
    devices: Optional[str] = None
    # executor: slurm: the Slurm job of the newest attempt (the attempt rows keep every one).
    slurm_job_id: Optional[str] = None
    # The policy's streaks of failures before the first batch and of preemptions without progress.
    setup_failures: int = 0
    preempt_streak: int = 0
    # The job's experiment-tracker runs (JSON, supervisor/jobs/trackers.py: TrackerRecord).
    trackers: Optional[str] = None


@dataclass
class AttemptRecord:
    id: int
    job: str
    number: int
    started_at: float
    ended_at: Optional[float]
    pid: Optional[int]
    pid_start_time: Optional[float]
    exit_code: Optional[int]
    signal: Optional[int]
    cause: Optional[str]
    detail: Optional[str]
    epochs_before: int
    epochs_after: Optional[int]
    resumed_from: Optional[str]
    first_batch_at: Optional[float]
    # Whole epochs whose training pass this attempt finished, as last seen in its progress file
    # (checkpointed or not); None when never seen. See supervisor/observe/goodput.py.
    epochs_reached: Optional[int] = None
    # Mid-epoch positions, for goodput's redone batches: batches of the next epoch in the state
    # the attempt started from, batches trained in all ((epoch - 1) * per_epoch + batch) as last
    # seen, and the epoch's length in batches.
    batch_before: Optional[int] = None
    batches_reached: Optional[int] = None
    batches_per_epoch: Optional[int] = None
    # The daemon's intent to end this attempt (a stop, a restart, a stall kill) and the wall
    # time of its SIGKILL: kept so that a daemon restart in the middle does not forget them.
    stop_cause: Optional[str] = None
    stop_detail: Optional[str] = None
    stop_by_user: Optional[int] = None
    stop_then: Optional[str] = None
    kill_at: Optional[float] = None
    devices: Optional[str] = None  # the GPUs this attempt was given ("2,3"); None: CPU
    # executor: slurm: the attempt's Slurm job (re-adopted by it after a daemon restart) and node.
    slurm_job_id: Optional[str] = None
    slurm_node: Optional[str] = None


@dataclass
class EventRecord:
    id: int
    job: str
    at: float
    kind: str
    from_state: Optional[str]
    to_state: Optional[str]
    reason: Optional[str]
    actor: Optional[str]
    data: Optional[str]


def _columns(cls) -> list[str]:
    return [f.name for f in fields(cls)]


# An event's text and each string in its data are capped: a job's 60 KB data path quoted in each of
# its events would grow the history by megabytes a day (the noisy neighbour, issue 20).
MAX_EVENT_REASON = 4096
MAX_EVENT_VALUE = 2048
MAX_EVENT_DATA = 65536  # after the strings are cut: more is left out whole


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [cut: {len(text)} characters]"


def _cut_strings(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value, MAX_EVENT_VALUE)
    if isinstance(value, dict):
        return {k: _cut_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cut_strings(v) for v in value]
    return value


def _event_data(data: Optional[dict]) -> Optional[str]:
    if not data:
        return None
    text = json.dumps(_cut_strings(data))
    return text if len(text) <= MAX_EVENT_DATA else json.dumps({"omitted_bytes": len(text)})


class StoreError(OSError):
    """The state database refused a write (full disk, I/O error); none of that change was kept.

    An ``OSError``: the daemon treats it like any other failed write to its disk.
    """


class StoreCorrupt(Exception):
    """The state database cannot be used (not a database, damaged): the daemon must not start on
    it, and the message says what to do. The file itself is left exactly as it is."""

    def __init__(self, path: Path, problem: str):
        backup = backup_path(path)
        if backup.exists():
            age = max(0.0, time.time() - backup.stat().st_mtime) / 60
            hint = (f"the daemon keeps a copy: `mv {path} {path}.damaged && cp {backup} {path}` restores "
                    f"the state of {age:.0f} minute(s) ago")
        else:
            hint = f"move it aside (`mv {path} {path}.damaged`) to start with no jobs"
        super().__init__(f"the state database {path} is damaged ({problem}); not starting on it. "
                         f"Recovery: {hint}; running trainings are re-adopted only from the database they "
                         "were recorded in")


def backup_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".backup")


# The database holds every job's secrets (env: values, notification URLs): its files are the
# daemon's user's alone, whatever the umask of whoever opens it.
DB_FILE_MODE = 0o600


def wal_files(path: Path) -> tuple[Path, Path]:
    return Path(f"{path}-wal"), Path(f"{path}-shm")


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (SQLite then keeps that mode,
    and gives its -wal and -shm files the database's mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, DB_FILE_MODE))
    except OSError:
        pass  # there already, or cannot be made: SQLite says why in its own words


def _tighten(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, DB_FILE_MODE)


class Store:
    """A thin, thread-safe layer over one SQLite connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        # Called with each event once it is committed (notifications); never for a rolled-back one.
        self.listeners: list[Callable[[EventRecord], None]] = []
        self._uncommitted: list[EventRecord] = []
        # Counts writes to the jobs table (a rolled-back one too: one round more, harmless): the
        # scheduler skips a round when none happened since the last.
        self.generation = 0
        try:
            self._open()
        except sqlite3.OperationalError:
            raise  # locked, read-only, no space: not damage
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            raise StoreCorrupt(self.path, str(exc)) from None

    def _open(self) -> None:
        _private_file(self.path)  # made 0600 before SQLite writes a byte of it
        # isolation_level=None: autocommit; multi-statement changes use `transaction()`.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
        except BaseException:
            self._db.close()
            raise
        for companion in (self.path, *wal_files(self.path)):
            _tighten(companion)  # an older daemon's 0644 files, and the -wal/-shm SQLite just made
        st = os.stat(self.path)
        self._file_id = (st.st_dev, st.st_ino)

    # -- the file under the open connection -------------------------------------------
    def file_problem(self) -> Optional[str]:
        """None while ``path`` is the file this connection has open; else what became of it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        return None if (st.st_dev, st.st_ino) == self._file_id else "replaced by another file"

    def write_back(self) -> Optional[Path]:
        """Put the open database back under its name (deleted or replaced while we ran): what
        this connection holds is the truth. A file found in its place is kept beside it;
        returns where, or None."""
        with self._lock:
            tmp = self.path.with_name(f".{self.path.name}.restoring-{os.getpid()}")
            self._copy_to(tmp)
            aside = None
            if self.path.exists():
                aside = self.path.with_name(f"{self.path.name}.replaced-{int(time.time())}")
                os.replace(self.path, aside)
            self._db.close()  # checkpoints into the old file; SQLite removes its -wal/-shm names
            os.replace(tmp, self.path)
            self._open()
            return aside

    def backup(self) -> Path:
        """A consistent copy at ``state.db.backup`` (SQLite's online backup, then a rename)."""
        dest = backup_path(self.path)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with self._lock:
            self._copy_to(tmp)
        os.replace(tmp, dest)
        return dest

    def _copy_to(self, tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        _private_file(tmp)  # the backup and the copy written back hold the same secrets: 0600
        out = sqlite3.connect(str(tmp))
        try:
            self._db.backup(out)
        except sqlite3.Error as exc:
            out.close()
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot copy the state database {self.path}: {exc}") from exc
        out.close()

    def _add_missing_columns(self) -> None:
        for table, column, kind in ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                try:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:
                    # another process (a CLI, a second Store) opening the same database added it first
                    if "duplicate column" not in str(exc):
                        raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every write inside the block land together or not at all.

        The daemon may be SIGKILLed between any two statements; rows that only make sense
        together (an attempt and the job's move to starting, say) go in one of these. Nested
        blocks join the outer one. The lock keeps the control thread's writes out meanwhile.
        """
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._write("BEGIN IMMEDIATE")
            try:
                yield
                self._write("COMMIT")
            except BaseException:
                self._uncommitted.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            committed, self._uncommitted = self._uncommitted, []
        self._announce(committed)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._write(sql, args)

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as exc:  # "database or disk is full", "disk I/O error", ...
            raise StoreError(f"cannot write the state database {self.path}: {exc}") from exc

    # -- jobs ---------------------------------------------------------------
    def add_job(self, name: str, spec_yaml: str, state: str, source: str = "",
                owner_uid: Optional[int] = None, owner_gid: Optional[int] = None) -> JobRecord:
        now = time.time()
        self.generation += 1
        self._exec(
            "INSERT INTO jobs (name, spec_yaml, source, state, created_at, updated_at, owner_uid, owner_gid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, spec_yaml, source, state, now, now, owner_uid, owner_gid),
        )
        return self.get_job(name)  # type: ignore[return-value]

    def get_job(self, name: str) -> Optional[JobRecord]:
        rows = self._query(f"SELECT {', '.join(_columns(JobRecord))} FROM jobs WHERE name = ?", (name,))
        return JobRecord(*rows[0]) if rows else None

    def list_jobs(self, states: Optional[Iterable[str]] = None, after: Optional[tuple[float, str]] = None,
                  limit: Optional[int] = None) -> list[JobRecord]:
        """Every job (or those in ``states``), oldest first; a page of them: ``limit`` jobs after the
        one whose (created_at, name) is ``after``."""
        where: list[str] = []
        args: tuple = ()
        if states is not None:
            states = tuple(states)
            where.append(f"state IN ({', '.join('?' * len(states))})" if states else "0")
            args += states
        if after is not None:
            where.append("(created_at, name) > (?, ?)")
            args += tuple(after)
        sql = f"SELECT {', '.join(_columns(JobRecord))} FROM jobs"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY created_at, name" + (" LIMIT ?" if limit is not None else "")
        rows = self._query(sql, args + ((limit,) if limit is not None else ()))
        return [JobRecord(*r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        return dict(self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def update_job(self, name: str, **values: Any) -> None:
        bad = set(values) - set(_columns(JobRecord))
        if bad:
            raise KeyError(f"unknown job column(s): {sorted(bad)}")
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        self.generation += 1
        self._exec(f"UPDATE jobs SET {sets} WHERE name = ?", (*values.values(), name))

    def remove_job(self, name: str) -> None:
        self.generation += 1
        with self.transaction():
            for table, col in (("events", "job"), ("attempts", "job"), ("jobs", "name")):
                self._write(f"DELETE FROM {table} WHERE {col} = ?", (name,))

    # -- attempts -----------------------------------------------------------
    def start_attempt(self, job: str, number: int, pid: int, pid_start_time: float,
                      epochs_before: int, resumed_from: Optional[str], batch_before: int = 0,
                      devices: Optional[str] = None) -> int:
        cur = self._exec(
            "INSERT INTO attempts (job, number, started_at, pid, pid_start_time, epochs_before, resumed_from,"
            " batch_before, devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job, number, time.time(), pid, pid_start_time, epochs_before, resumed_from, batch_before, devices),
        )
        return int(cur.lastrowid)

    def end_attempt(self, attempt_id: int, *, exit_code: Optional[int], signal: Optional[int],
                    cause: str, detail: str, epochs_after: Optional[int], at: Optional[float] = None) -> None:
        """``at``: when the attempt ended (its exit may be recorded later, after a full disk)."""
        self._exec(
            "UPDATE attempts SET ended_at = ?, exit_code = ?, signal = ?, cause = ?, detail = ?, epochs_after = ?"
            " WHERE id = ?",
            (at or time.time(), exit_code, signal, cause, detail, epochs_after, attempt_id),
        )

    def update_attempt(self, attempt_id: int, **values: Any) -> None:
        """Set columns of one attempt row (executor facts: its Slurm job, its node)."""
        if not values:
            return
        bad = set(values) - set(_columns(AttemptRecord))
        if bad:
            raise KeyError(f"unknown attempt column(s): {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in values)
        self._exec(f"UPDATE attempts SET {sets} WHERE id = ?", (*values.values(), attempt_id))

    def set_stop_intent(self, attempt_id: int, *, cause: Optional[str], detail: Optional[str],
                        by_user: bool, then: Optional[str], kill_at: Optional[float]) -> None:
        self._exec("UPDATE attempts SET stop_cause = ?, stop_detail = ?, stop_by_user = ?, stop_then = ?,"
                   " kill_at = ? WHERE id = ?", (cause, detail, int(by_user), then, kill_at, attempt_id))

    def mark_first_batch(self, attempt_id: int, at: float) -> None:
        self._exec("UPDATE attempts SET first_batch_at = ? WHERE id = ? AND first_batch_at IS NULL",
                   (at, attempt_id))

    def note_epochs_reached(self, job: str, number: int, epochs: int) -> None:
        """Raise attempt ``number``'s ``epochs_reached`` to ``epochs`` (it never goes down)."""
        self._exec("UPDATE attempts SET epochs_reached = ? WHERE job = ? AND number = ?"
                   " AND (epochs_reached IS NULL OR epochs_reached < ?)", (epochs, job, number, epochs))

    def note_batches_reached(self, job: str, number: int, batches: int, per_epoch: int) -> None:
        """Raise attempt ``number``'s ``batches_reached`` to ``batches`` (it never goes down)."""
        self._exec("UPDATE attempts SET batches_reached = ?, batches_per_epoch = ? WHERE job = ? AND number = ?"
                   " AND (batches_reached IS NULL OR batches_reached < ?)",
                   (batches, per_epoch, job, number, batches))

    def attempts(self, job: str) -> list[AttemptRecord]:
        rows = self._query(
            f"SELECT {', '.join(_columns(AttemptRecord))} FROM attempts WHERE job = ? ORDER BY number", (job,))
        return [AttemptRecord(*r) for r in rows]

    def attempts_by_job(self, jobs: list[str]) -> dict[str, list[AttemptRecord]]:
        """The attempts of each of ``jobs`` in one query (a page of a listing is not a query per job)."""
        if not jobs:
            return {}
        rows = self._query(f"SELECT {', '.join(_columns(AttemptRecord))} FROM attempts"
                           f" WHERE job IN ({', '.join('?' * len(jobs))}) ORDER BY job, number", tuple(jobs))
        out: dict[str, list[AttemptRecord]] = {}
        for r in rows:
            record = AttemptRecord(*r)
            out.setdefault(record.job, []).append(record)
        return out

    def open_attempt(self, job: str) -> Optional[AttemptRecord]:
        rows = self._query(
            f"SELECT {', '.join(_columns(AttemptRecord))} FROM attempts"
            " WHERE job = ? AND ended_at IS NULL ORDER BY number DESC LIMIT 1", (job,))
        return AttemptRecord(*rows[0]) if rows else None

    # -- events -------------------------------------------------------------
    def add_event(self, job: str, kind: str, reason: str = "", *, from_state: Optional[str] = None,
                  to_state: Optional[str] = None, actor: Optional[str] = None,
                  data: Optional[dict] = None) -> int:
        at, text, reason = time.time(), _event_data(data), _cut(reason, MAX_EVENT_REASON) if reason else reason
        with self._lock:
            cur = self._exec(
                "INSERT INTO events (job, at, kind, from_state, to_state, reason, actor, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job, at, kind, from_state, to_state, reason, actor, text),
            )
            record = EventRecord(int(cur.lastrowid), job, at, kind, from_state, to_state, reason, actor, text)
            if self._db.in_transaction:  # told once the transaction commits
                self._uncommitted.append(record)
                return record.id
        self._announce([record])
        return record.id

    def _announce(self, records: list[EventRecord]) -> None:
        for record in records:
            for listener in list(self.listeners):
                try:
                    listener(record)
                except Exception:  # a listener's bug must not undo or hide the write
                    pass

    def last_event_at(self, job: str, kind: str) -> Optional[float]:
        """When the job's newest event of ``kind`` happened; None when there is none."""
        rows = self._query("SELECT MAX(at) FROM events WHERE job = ? AND kind = ?", (job, kind))
        return rows[0][0] if rows else None

    def events(self, job: str) -> list[EventRecord]:
        rows = self._query(
            f"SELECT {', '.join(_columns(EventRecord))} FROM events WHERE job = ? ORDER BY id", (job,))
        return [EventRecord(*r) for r in rows]

    def events_after(self, after_id: int, job: Optional[str] = None, limit: int = 500) -> list[EventRecord]:
        """Events with an id above ``after_id`` (of one job, or all), oldest first: ``events -f``."""
        where, args = ("id > ? AND job = ?", (after_id, job)) if job else ("id > ?", (after_id,))
        rows = self._query(f"SELECT {', '.join(_columns(EventRecord))} FROM events WHERE {where}"
                           " ORDER BY id LIMIT ?", (*args, limit))
        return [EventRecord(*r) for r in rows]

    def latest_events(self, count: int, job: Optional[str] = None) -> list[EventRecord]:
        """The newest ``count`` events (of one job, or all), oldest first."""
        where, args = ("WHERE job = ?", (job,)) if job else ("", ())
        rows = self._query(f"SELECT {', '.join(_columns(EventRecord))} FROM events {where}"
                           " ORDER BY id DESC LIMIT ?", (*args, count))
        return [EventRecord(*r) for r in reversed(rows)]

    def last_event_id(self) -> int:
        rows = self._query("SELECT MAX(id) FROM events")
        return int(rows[0][0] or 0)
