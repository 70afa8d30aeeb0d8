"""The small progress file the training child writes and the daemon reads.

Written atomically (temp file + rename) so the daemon never reads half a file.
Pure stdlib: the daemon imports this module too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The file's content, or None when missing or unreadable (never raises)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
