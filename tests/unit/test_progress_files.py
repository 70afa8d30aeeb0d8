"""The progress reader re-reads a file only when it changed, and tells readers which version they got."""

import json
import os

from supervisor.contract import write_json_atomic
from supervisor.probes.progress import ProgressFiles


def test_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    write_json_atomic(path, {"epoch": 1})
    files = ProgressFiles()
    first, key = files.read(path)
    reads = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text: reads.append(text) or real_loads(text))
    again, same_key = files.read(path)
    assert again == first and first.epoch == 1 and same_key == key
    assert reads == []  # served from the cache


def test_a_rewritten_file_is_read_and_gets_a_new_key(tmp_path):
    path = tmp_path / "progress.json"
    write_json_atomic(path, {"epoch": 1})
    files = ProgressFiles()
    _, key1 = files.read(path)
    write_json_atomic(path, {"epoch": 2})  # the child writes by rename: a new inode
    data, key2 = files.read(path)
    assert data.epoch == 2 and key2 != key1


def test_a_removed_file_reads_as_none(tmp_path):
    path = tmp_path / "progress.json"
    write_json_atomic(path, {"epoch": 1})
    files = ProgressFiles()
    files.read(path)
    os.unlink(path)
    assert files.read(path) == (None, None)


def test_a_half_written_file_is_none_but_its_next_version_is_read(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text('{"epoch": ')
    files = ProgressFiles()
    assert files.read(path)[0] is None
    write_json_atomic(path, {"epoch": 3})
    assert files.read(path)[0].epoch == 3
