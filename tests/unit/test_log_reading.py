"""Reading a job's log for tail and tail -f (what the socket sends back)."""

from supervisor.control.handlers import read_from, read_last_lines


def test_last_lines(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"one\ntwo\nthree\nfour\n")
    assert read_last_lines(log, 2) == ("three\nfour\n", 19)
    assert read_last_lines(log, 10) == ("one\ntwo\nthree\nfour\n", 19)
    assert read_last_lines(log, 0) == ("", 19)
    log.write_bytes(b"one\ntwo\npartial")
    assert read_last_lines(log, 1) == ("partial", 15)
    assert read_last_lines(tmp_path / "missing.log", 5) == ("", 0)


def test_follow_from_an_offset_and_restart_after_truncation(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"abc\n")
    assert read_from(log, 0) == ("abc\n", 4, False)
    with open(log, "ab") as f:
        f.write(b"def\n")
    assert read_from(log, 4) == ("def\n", 8, False)
    assert read_from(log, 8) == ("", 8, False)
    log.write_bytes(b"x\n")  # truncated and rewritten
    assert read_from(log, 8) == ("x\n", 2, True)


def test_a_character_cut_by_the_chunk_is_read_whole_next_time(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes("aé".encode())  # b"a\xc3\xa9"
    text, offset, _ = read_from(log, 0, limit=2)
    assert (text, offset) == ("a", 1)
    assert read_from(log, offset, limit=2)[:2] == ("é", 3)
