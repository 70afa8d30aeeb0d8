"""The small progress file the training child writes and the daemon reads.

Written atomically (temp file + rename) so the daemon never reads half a file.
The temp name is random and created exclusively, and reads follow no link:
the folder belongs to the job's user, and a root daemon must neither write
through a link planted at a predictable name nor read a file linked in.
Pure stdlib: the daemon imports this module too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from supervisor import safefs

MAX_JSON_BYTES = 1 << 20  # a progress file is a few KiB; anything bigger is not one


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """The plan, progress and exit record are their job owner's alone (0600)."""
    safefs.write_atomic(path, json.dumps(data).encode(), mode=0o600)


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The file's content, or None when missing, unreadable, a link or not plain JSON (never raises)."""
    try:
        data = json.loads(safefs.read_regular(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
