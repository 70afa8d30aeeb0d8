"""results.csv reading and trimming: a real file from the fixture run plus synthetic damage."""

from __future__ import annotations

import shutil

from supervisor.results_csv import read_epochs, trim_after

HEADER = "epoch,time,train/box_loss,metrics/mAP50(B)\n"
PADDED_HEADER = "                  epoch,         time,      train/box_loss,   metrics/mAP50(B)\n"


def row(epoch: int, loss: float, padded: bool = False) -> str:
    if padded:
        return f"{epoch:>23},{1.0:>14},{loss:>20},{0.5:>19}\n"
    return f"{epoch},1.0,{loss},0.5\n"


def test_real_results_csv(real_checkpoints, tmp_path):
    csv = tmp_path / "results.csv"
    shutil.copyfile(real_checkpoints["run_dir"] / "results.csv", csv)
    original = csv.read_bytes()
    assert read_epochs(csv) == [1, 2]

    assert trim_after(csv, 1, backup=tmp_path / "backup.csv") == 1
    assert read_epochs(csv) == [1]
    assert (tmp_path / "backup.csv").read_bytes() == original
    assert csv.read_text().splitlines() == original.decode().splitlines()[:2]   # header and row 1, untouched


def test_duplicate_epoch_keeps_the_last_occurrence(tmp_path):
    csv = tmp_path / "results.csv"
    # attempt 1 wrote epoch 3, died before last.pt; attempt 2 redid 3, wrote 4, died before saving 4
    csv.write_text(HEADER + row(1, 0.9) + row(2, 0.8) + row(3, 0.7) + row(3, 0.65) + row(4, 0.6))
    assert read_epochs(csv) == [1, 2, 3, 3, 4]

    assert trim_after(csv, 3, backup=tmp_path / "b.csv") == 2
    assert csv.read_text() == HEADER + row(1, 0.9) + row(2, 0.8) + row(3, 0.65)


def test_torn_last_row_is_dropped_and_the_file_ends_with_a_newline(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + row(1, 0.9) + row(2, 0.8) + "1")   # "1" of "12,...": cut mid-append
    assert read_epochs(csv) == [1, 2]
    assert trim_after(csv, 2, backup=tmp_path / "b.csv") == 1
    assert csv.read_text() == HEADER + row(1, 0.9) + row(2, 0.8)
    with open(csv, "a") as f:                                   # the resumed run appends cleanly
        f.write(row(3, 0.7))
    assert read_epochs(csv) == [1, 2, 3]


def test_space_padded_older_format(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(PADDED_HEADER + row(1, 0.9, True) + row(2, 0.8, True) + row(2, 0.75, True))
    assert read_epochs(csv) == [1, 2, 2]
    assert trim_after(csv, 1, backup=tmp_path / "b.csv") == 2
    assert csv.read_text() == PADDED_HEADER + row(1, 0.9, True)


def test_nothing_to_remove_leaves_the_file_alone(tmp_path):
    csv = tmp_path / "results.csv"
    text = HEADER + row(1, 0.9) + row(2, 0.8)
    csv.write_text(text)
    before = csv.stat().st_ino
    assert trim_after(csv, 5, backup=tmp_path / "b.csv") == 0
    assert csv.read_text() == text and csv.stat().st_ino == before
    assert not (tmp_path / "b.csv").exists()


def test_missing_or_foreign_file(tmp_path):
    assert read_epochs(tmp_path / "none.csv") == []
    assert trim_after(tmp_path / "none.csv", 3, backup=tmp_path / "b.csv") == 0
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert read_epochs(tmp_path / "other.csv") == []
    assert trim_after(tmp_path / "other.csv", 0, backup=tmp_path / "b.csv") == 0
    assert not (tmp_path / "b.csv").exists()


def test_trim_to_zero_keeps_only_the_header_and_the_mode(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + row(1, 0.9))
    csv.chmod(0o664)
    assert trim_after(csv, 0, backup=tmp_path / "b.csv") == 1
    assert csv.read_text() == HEADER
    assert csv.stat().st_mode & 0o777 == 0o664
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_backup_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    # The run folder is the job's user's: a link at the backup's (predictable) name made a
    # root daemon write the results into any file on the host.
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + row(1, 0.9) + row(2, 0.8))
    backup = tmp_path / "results.csv.before-attempt-2"
    backup.symlink_to(victim)
    assert trim_after(csv, 1, backup=backup) == 1
    assert victim.read_text() == "untouched\n"
    assert not backup.is_symlink() and backup.read_text() == HEADER + row(1, 0.9) + row(2, 0.8)


def test_the_backup_keeps_the_originals_mode(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + row(1, 0.9) + row(2, 0.8))
    csv.chmod(0o640)
    assert trim_after(csv, 1, backup=tmp_path / "b.csv") == 1
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o640


def test_a_byte_that_is_not_utf8_does_not_stop_the_trim(tmp_path):
    csv = tmp_path / "results.csv"
    kept = row(1, 0.9).encode().replace(b"0.9", b"0.9\xff")  # a stray byte: replaced, the row kept
    csv.write_bytes(HEADER.encode() + kept + row(2, 0.8).encode())
    assert trim_after(csv, 1, backup=tmp_path / "b.csv") == 1
    assert csv.read_bytes() == HEADER.encode() + kept.replace(b"\xff", "\ufffd".encode())


def test_a_complete_last_row_without_a_newline_gets_one(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + row(1, 0.9) + row(1, 0.7) + row(2, 0.8).rstrip("\n"))
    assert trim_after(csv, 2, backup=tmp_path / "b.csv") == 1           # the duplicate epoch 1
    assert csv.read_text() == HEADER + row(1, 0.7) + row(2, 0.8)        # the next append starts a new line
