"""The runtime handle of a job's live attempt: what the daemon keeps in memory while it runs.

Its own module so that the daemon's collaborators that read it (launches.py, attempts.py, ending.py,
scheduling.py, reconcile.py) need not import core.py, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from supervisor.jobs.states import Cause
from supervisor.process import launcher


@dataclass
class Running:
    """Runtime handle of a job's live attempt (never persisted)."""

    child: launcher.Child
    attempt_id: int
    attempt_no: int
    epochs_before: int
    log_offset: int
    batch_before: int = 0                # batches of the next epoch in the state resumed from (mid-epoch)
    images_before: int = 0               # images of the next epoch in that state (what progress compares)
    kill_cause: Optional[Cause] = None   # set when the daemon itself ends the attempt
    user_stop: bool = False
    then: Optional[str] = None           # "restart": relaunch once stopped
    kill_at: Optional[float] = None      # monotonic deadline for SIGKILL after TERM
    first_batch_seen: bool = False
    progress_key: Optional[tuple[int, int, int]] = None  # version of the progress file last acted on
    progress_path: str = ""                               # the job's progress.json (set by the daemon)
    exit_status: tuple[Optional[int], Optional[int]] = (None, None)  # (exit code, signal) once it ended
    ended_at: Optional[float] = None                      # wall time the daemon saw it end
    extra: dict[str, Any] = field(default_factory=dict)
