"""Ultralytics' results.csv: read its epochs, and trim it to what a checkpoint covers.

The file has a header whose first column is ``epoch`` (1-based; older versions
pad every field with spaces) and one row per epoch. Ultralytics appends the
row *before* writing last.pt, so a kill in between leaves a row the checkpoint
does not have, and the resumed run writes that epoch again. ``trim_after``
makes the file agree with the checkpoint before a resume.

Rows are kept as the exact original lines (no re-serialising), so the file
looks the same to any tool that already parsed it.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

from supervisor import safefs


def read_epochs(csv_path: Union[str, Path]) -> list[int]:
    """The ``epoch`` values of the complete rows, in file order (duplicates included)."""
    parsed = _parse(Path(csv_path))
    return [] if parsed is None else [e for e, _ in parsed[1] if e is not None]


def trim_after(csv_path: Union[str, Path], epochs_done: int, backup: Union[str, Path]) -> int:
    """Drop rows after ``epochs_done``, duplicate epochs (keeping the last) and torn rows.

    The original is copied to ``backup`` first and the result replaces the file
    atomically. Returns the number of rows removed; 0 (file untouched, no
    backup) when there is nothing to remove or no file.
    """
    path = Path(csv_path)
    parsed = _parse(path)
    if parsed is None:
        return 0
    header, rows = parsed
    kept = _keep(rows, epochs_done)
    removed = len(rows) - len(kept)
    if removed == 0:
        return 0
    _backup(path, Path(backup))
    _atomic_write(path, header + "".join(_terminated(line) for line in kept))
    return removed


def _backup(path: Path, backup: Path) -> None:
    """Copy ``path`` to ``backup`` under a fresh name, then rename: whatever is at ``backup`` (a
    link the job's user planted) is replaced, never written through."""
    data = path.read_bytes()
    safefs.write_atomic(backup, data, mode=path.stat().st_mode & 0o777)


def _keep(rows: list[tuple[Optional[int], str]], epochs_done: int) -> list[str]:
    """Lines to keep, in order: complete rows up to ``epochs_done``, only the last row of each epoch.

    The last occurrence wins because it was written by the run that went on to
    reach the checkpoint; earlier ones belong to an attempt that died before saving.
    """
    last_index = {e: i for i, (e, _) in enumerate(rows) if e is not None}
    return [line for i, (e, line) in enumerate(rows)
            if e is not None and e <= epochs_done and last_index[e] == i]


def _parse(path: Path) -> Optional[tuple[str, list[tuple[Optional[int], str]]]]:
    """(header line, [(epoch or None if torn/unparseable, raw line)]); None if missing or not a results.csv."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].split(",")[0].strip() != "epoch":
        return None
    width = len(lines[0].split(","))
    rows = [(_epoch(line, width), line) for line in lines[1:] if line.strip()]
    return _terminated(lines[0]), rows


def _epoch(line: str, width: int) -> Optional[int]:
    """The row's epoch, or None for a row cut short by a kill mid-append (fewer fields than the header).

    A torn row's epoch field may itself be cut ("1" of "12"), so it must not count.
    """
    fields = line.rstrip("\r\n").split(",")
    if len(fields) != width:
        return None
    try:
        return int(float(fields[0].strip()))
    except ValueError:
        return None


def _terminated(line: str) -> str:
    # a torn last line has no newline; the resumed run's first append must start a new line
    return line if line.endswith("\n") else line + "\n"


def _atomic_write(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _same_owner_and_mode(Path(name), path)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _same_owner_and_mode(tmp: Path, original: Path) -> None:
    """The daemon may run as root while training runs as the job's user, who must keep
    appending to this file: the replacement gets the original's mode and owner (best effort)."""
    st = original.stat()
    os.chmod(tmp, st.st_mode & 0o7777)
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass


def read_results(text: str) -> tuple[dict[int, dict[str, float]], list[int]]:
    """results.csv as {epoch: {column: value}} and the epochs that appeared more than once (last one wins,
    as in ``results_csv.trim_after``). Older Ultralytics pads fields with spaces; torn rows are skipped."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header or header[0] != "epoch":
        return {}, []
    rows: dict[int, dict[str, float]] = {}
    duplicates: list[int] = []
    for fields in reader:
        if len(fields) != len(header):
            continue
        try:
            values = {h: float(v) for h, v in zip(header, fields)}
        except ValueError:
            continue
        epoch = int(values.pop("epoch"))
        if epoch in rows:
            duplicates.append(epoch)
        rows[epoch] = values
    return rows, sorted(set(duplicates))
