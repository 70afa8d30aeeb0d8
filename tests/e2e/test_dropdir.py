"""The drop directory against a real daemon: inotify, real files, bad inputs of every kind.

Accepted jobs run the test-only fake trainer (YOLO_SUPERVISOR_FAKE_TRAINER):
here only the acceptance matters, not the training.
"""

import os
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAKE_DATA, cpu_job, wait_for

SETTLE_S = 1.0  # supervisor.control.watcher.SETTLE_S


@pytest.fixture
def fake(fake_daemon):
    return fake_daemon


def job(name: str) -> dict:
    return cpu_job(name, FAKE_DATA, epochs=2)


def inbox(d) -> Path:
    return d.home / "inbox"


def wait_rejected(d, filename: str, timeout: float = 30) -> str:
    error = inbox(d) / "rejected" / f"{filename}.error"

    def done():
        d.assert_alive()
        return error.exists() and error.read_text()
    text = wait_for(done, timeout, what=f"{filename} rejected")
    assert (inbox(d) / "rejected" / filename).is_symlink() or (inbox(d) / "rejected" / filename).exists()
    assert not (inbox(d) / filename).exists()
    return text


def wait_accepted(d, name: str, filename: str | None = None, timeout: float = 30):
    filename = filename or f"{name}.yaml"
    found = wait_for(lambda: d.job(name) or d.assert_alive(), timeout, what=f"job {name} accepted")
    assert (inbox(d) / "accepted" / filename).exists()
    return found


def assert_still_serving(d, name: str = "after-the-bad-one"):
    """The daemon survived and still takes good files."""
    d.drop(job(name))
    wait_accepted(d, name)


def write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


SYNTAX_ERROR = """\
name: syntax
train:
  model: yolov8n.yaml
  data: [unclosed, list
  epochs: 3
"""


@pytest.mark.parametrize("filename, content, expected", [
    ("syntax.yaml", SYNTAX_ERROR, "line 5, column 9: YAML syntax error"),
    ("missing.yaml", yaml.safe_dump({"train": job("x")["train"]}), "name: Field required"),
    ("no-epochs.yaml", yaml.safe_dump({"name": "no-epochs", "train": {"model": "m.yaml", "data": "d.yaml"}}),
     "train: missing required key(s): epochs"),
    ("unknown.yaml", yaml.safe_dump({**job("unknown"), "surprise": 1}), "surprise: unknown key"),
    ("wrongtype.yml", yaml.safe_dump({**job("wrongtype"), "restart": {"max_restarts": "many"}}),
     "restart.max_restarts: Input should be a valid integer"),
    ("escape.yaml", yaml.safe_dump({**job("x"), "name": "../escape"}), "name: must match"),
    ("binary.yaml", b"name: x\ntrain: \xff\xfe\n", "line 2: not UTF-8 text"),
    ("list.yaml", "- just\n- a list\n", "(top level): expected a mapping"),
], ids=lambda v: v.split(".")[0] if isinstance(v, str) and v.endswith(("yaml", "yml")) else "")
def test_bad_job_files_are_rejected_with_a_clear_error(fake, filename, content, expected):
    fake.start()
    write(inbox(fake) / filename, content)
    error = wait_rejected(fake, filename)
    assert expected in error, error
    assert_still_serving(fake)


def test_a_duplicate_name_is_rejected(fake):
    fake.start()
    fake.drop(job("dup"))
    wait_accepted(fake, "dup")
    fake.drop(job("dup"), filename="dup-again.yaml")
    assert "name: a job named 'dup' already exists" in wait_rejected(fake, "dup-again.yaml")
    assert_still_serving(fake)


def test_a_10mb_file_is_rejected_by_size(fake):
    """A valid job padded to 10 MB: accepted if the size were not checked first."""
    fake.start()
    path = inbox(fake) / "huge.yaml"
    with open(path, "w") as f:
        f.write(yaml.safe_dump(job("huge")))
        pad = "# padding " + "x" * 1013 + "\n"
        for _ in range(10 * 1024):
            f.write(pad)
    error = wait_rejected(fake, "huge.yaml")
    assert "over the 65536 byte limit" in error, error
    assert fake.job("huge") is None
    assert_still_serving(fake)


def test_links_and_special_files_are_not_followed(fake, tmp_path):
    fake.start()
    outside = write(tmp_path / "elsewhere.yaml", yaml.safe_dump(job("linked")))
    os.symlink(outside, inbox(fake) / "symlink.yaml")
    assert "symbolic link" in wait_rejected(fake, "symlink.yaml")
    os.link(outside, inbox(fake) / "hardlink.yaml")
    assert "hard links" in wait_rejected(fake, "hardlink.yaml")
    os.mkfifo(inbox(fake) / "fifo.yaml")  # opening it for reading would block a careless reader
    assert "not a regular file" in wait_rejected(fake, "fifo.yaml")
    assert fake.job("linked") is None
    assert_still_serving(fake)


def test_a_file_written_slowly_is_read_once_complete(fake):
    fake.start()
    assert_still_serving(fake, "watching")  # the inotify watch is on (not the start-up scan)
    text = yaml.safe_dump(job("slow"))
    half = text.index("epochs")  # the first half alone is an invalid job (no epochs)
    path = inbox(fake) / "slow.yaml"
    with open(path, "w") as f:
        f.write(text[:half])
        f.flush()
        # The daemon sees the writes (IN_MODIFY) but no close: a file dropped later is handled
        # first, and the half-written one stays untouched well past the settle time.
        fake.drop(job("marker"))
        wait_accepted(fake, "marker")
        deadline = time.monotonic() + 3 * SETTLE_S
        while time.monotonic() < deadline:
            assert path.exists(), "the half-written file was taken"
            assert not (inbox(fake) / "rejected" / "slow.yaml.error").exists()
            assert fake.job("slow") is None
            time.sleep(0.05)
        f.write(text[half:])
    accepted = wait_accepted(fake, "slow")
    assert yaml.safe_load(accepted.spec_yaml)["train"]["epochs"] == 2


def test_files_present_before_start_are_handled_and_temp_files_ignored(fake):
    box = inbox(fake)
    box.mkdir(parents=True)
    write(box / "early.yaml", yaml.safe_dump(job("early")))
    write(box / "early-bad.yaml", "name: [\n")
    ignored = [write(box / n, yaml.safe_dump(job(n.strip(".#~").split(".")[0] or "ign")))
               for n in (".hidden.yaml", "editing.yaml~", "#autosave.yaml#", "notes.txt")]
    fake.start()
    wait_accepted(fake, "early")
    assert "YAML syntax error" in wait_rejected(fake, "early-bad.yaml")
    assert_still_serving(fake)
    assert all(p.exists() for p in ignored)
    assert {j.name for j in [fake.job("early"), fake.job("after-the-bad-one")]} == {"early", "after-the-bad-one"}


def test_a_file_moved_in_from_another_directory_is_accepted(fake, tmp_path):
    fake.start()
    assert_still_serving(fake, "watching")
    outside = write(tmp_path / "moved.yaml", yaml.safe_dump(job("moved")))
    os.rename(outside, inbox(fake) / "moved.yaml")  # IN_MOVED_TO with no IN_MOVED_FROM in the inbox
    wait_accepted(fake, "moved")
