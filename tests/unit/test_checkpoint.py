"""The checkpoint probe against real Ultralytics checkpoints and damaged copies of them."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from supervisor.probes.checkpoint import MIDEPOCH_KEY, CkptKind, inspect_checkpoint

# --------------------------------------------------------------------------- helpers (also used by test_vault)


def truncated(src: Path, dst: Path, keep: int) -> Path:
    """The first ``keep`` bytes of ``src``: what a kill during ``Path.write_bytes`` leaves."""
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def record_data_offset(path: Path, name: str) -> tuple[int, int]:
    """(offset of the first data byte, data length) of a stored record, read from its local header."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    assert head[:4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_byte_in_record(src: Path, dst: Path, name: str) -> Path:
    """Copy ``src`` with one bit flipped in the middle of record ``name``'s data."""
    start, length = record_data_offset(src, name)
    data = bytearray(src.read_bytes())
    data[start + length // 2] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def tensor_records(path: Path) -> list[str]:
    """Tensor storage records, in archive order."""
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if "/data/" in n]


def repack(src: Path, dst: Path, *, data_pkl: bytes | None = None, drop: str | None = None) -> Path:
    """Rewrite the archive with valid CRCs, optionally replacing data.pkl or leaving out one record."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename == drop:
                continue
            body = data_pkl if (data_pkl is not None and info.filename.endswith("/data.pkl")) else zin.read(info)
            zout.writestr(info.filename, body)
    return dst


def with_epoch(src: Path, dst: Path, epoch: int) -> Path:
    """A copy of a real checkpoint whose top-level ``epoch`` is ``epoch`` (a valid archive, new CRCs)."""
    with zipfile.ZipFile(src) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    ops = list(pickletools.genops(pkl))
    for i, (op, arg, _) in enumerate(ops):
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE") and arg == "epoch":
            j = i + 1
            while ops[j][0].name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                j += 1
            op2, _, pos = ops[j]
            assert op2.name == "BININT1" and 0 <= epoch < 256, op2.name
            patched = pkl[: pos + 1] + bytes([epoch]) + pkl[pos + 2:]
            return repack(src, dst, data_pkl=patched)
    raise AssertionError("no 'epoch' key in data.pkl")


# --------------------------------------------------------------------------- real checkpoints


@pytest.mark.parametrize("key, epoch", [("resumable0", 0), ("resumable1", 1)])
def test_real_resumable_checkpoint(real_checkpoints, key, epoch):
    info = inspect_checkpoint(real_checkpoints[key])
    assert info.kind is CkptKind.RESUMABLE, info.problem
    assert info.is_resumable and info.problem is None
    assert info.epoch == epoch and info.epochs_done == epoch + 1
    assert info.has_optimizer
    assert info.size == real_checkpoints[key].stat().st_size
    assert info.train_args["epochs"] == 2 and info.train_args["imgsz"] == 64
    json.dumps(info.train_args)  # only plain values survive


def test_real_stripped_checkpoint_is_finished(real_checkpoints):
    info = inspect_checkpoint(real_checkpoints["finished"])
    assert info.kind is CkptKind.FINISHED
    assert info.epoch == -1 and not info.has_optimizer
    assert info.epochs_done is None and not info.is_resumable
    assert info.train_args["epochs"] == 2


def test_missing_file(tmp_path):
    info = inspect_checkpoint(tmp_path / "nope.pt")
    assert info.kind is CkptKind.MISSING and info.problem and info.size == 0


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    info = inspect_checkpoint(tmp_path / "e.pt")
    assert info.kind is CkptKind.CORRUPT and info.problem == "empty file"


@pytest.mark.parametrize("cut", ["4 bytes", "100 bytes", "half", "before the directory", "1 byte short",
                                 "22 bytes short"])
def test_truncated_copies_are_corrupt(real_checkpoints, tmp_path, cut):
    src = real_checkpoints["resumable1"]
    size = src.stat().st_size
    with zipfile.ZipFile(src) as zf:
        directory_start = zf.start_dir  # every record complete, central directory gone
    keep = {"4 bytes": 4, "100 bytes": 100, "half": size // 2, "before the directory": directory_start,
            "1 byte short": size - 1, "22 bytes short": size - 22}[cut]
    info = inspect_checkpoint(truncated(src, tmp_path / "t.pt", keep))
    assert info.kind is CkptKind.CORRUPT
    assert info.problem.startswith("truncated"), info.problem
    assert info.size == keep


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_bit_flip_in_a_tensor_record_names_the_record(real_checkpoints, tmp_path, which):
    src = real_checkpoints["resumable1"]
    names = tensor_records(src)
    name = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}[which]
    info = inspect_checkpoint(flip_byte_in_record(src, tmp_path / "f.pt", name))
    assert info.kind is CkptKind.CORRUPT
    assert info.problem == f"CRC mismatch in record {name}"


def test_bit_flip_in_the_biggest_tensor_record(real_checkpoints, tmp_path):
    src = real_checkpoints["resumable0"]
    with zipfile.ZipFile(src) as zf:
        name = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename
    info = inspect_checkpoint(flip_byte_in_record(src, tmp_path / "f.pt", name))
    assert info.problem == f"CRC mismatch in record {name}"


def test_bit_flip_in_data_pkl(real_checkpoints, tmp_path):
    src = real_checkpoints["finished"]
    name = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("/data.pkl"))
    info = inspect_checkpoint(flip_byte_in_record(src, tmp_path / "f.pt", name))
    assert info.kind is CkptKind.CORRUPT and info.problem == f"CRC mismatch in record {name}"


def test_missing_tensor_record_is_corrupt(real_checkpoints, tmp_path):
    src = real_checkpoints["resumable0"]
    gone = tensor_records(src)[3]
    info = inspect_checkpoint(repack(src, tmp_path / "r.pt", drop=gone))
    assert info.kind is CkptKind.CORRUPT and gone in info.problem


def test_repacked_archive_with_patched_epoch_reads_back(real_checkpoints, tmp_path):
    info = inspect_checkpoint(with_epoch(real_checkpoints["resumable0"], tmp_path / "e.pt", 7))
    assert info.kind is CkptKind.RESUMABLE and info.epoch == 7 and info.epochs_done == 8


def test_garbage_is_not_a_zip(tmp_path):
    (tmp_path / "g.pt").write_bytes(os.urandom(4096))
    info = inspect_checkpoint(tmp_path / "g.pt")
    assert info.kind is CkptKind.CORRUPT and info.problem.startswith("not a zip archive")


def _zip_with_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("proto", [2, 4])
def test_malicious_pickle_runs_no_code(tmp_path, proto):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class EvilExec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    top_level = pickle.dumps(Evil(), protocol=proto)
    nested = pickle.dumps({"epoch": 3, "optimizer": EvilExec(), "train_args": {"x": Evil()}}, protocol=proto)

    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "a.pt", top_level))
    assert info.kind is CkptKind.CORRUPT and "not a dict" in info.problem
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "b.pt", nested))
    assert info.train_args == {}  # the stub stood in for the payload and was dropped
    assert not marker.exists()


def test_non_dict_and_epochless_pickles_are_corrupt(tmp_path):
    for i, obj in enumerate([[1, 2, 3], {"model": None}, {"epoch": "3"}, {"epoch": -5, "optimizer": {}}]):
        info = inspect_checkpoint(_zip_with_pickle(tmp_path / f"{i}.pt", pickle.dumps(obj)))
        assert info.kind is CkptKind.CORRUPT, obj


def test_garbled_pickle_is_corrupt_not_an_exception(tmp_path):
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "g.pt", b"\x80\x02}q\x00(X\x05\x00"))
    assert info.kind is CkptKind.CORRUPT and "data.pkl" in info.problem


def test_probe_imports_and_reads_without_torch(real_checkpoints):
    code = (
        "import sys\n"
        "import supervisor.probes.checkpoint as c, supervisor.probes.vault, supervisor.results_csv\n"
        "info = c.inspect_checkpoint(sys.argv[1])\n"
        "assert info.is_resumable, info\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics', 'numpy')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code, str(real_checkpoints["resumable1"])], check=True, timeout=60)


# --------------------------------------------------------------------------- bounded reading (issue 20)


def _shared_reference_bomb(levels: int = 7, fanout: int = 8) -> dict:
    """A few hundred bytes once pickled (each level is stored once and referenced ``fanout`` times),
    but fanout**levels values when copied out naively."""
    node: object = ["x"]
    for _ in range(levels):
        node = [node] * fanout
    return {"epoch": 3, "optimizer": {"state": {}}, "train_args": {"model": "m.yaml", "bomb": node}}


def test_a_pickle_bomb_in_train_args_is_unreadable_like_a_corrupt_file(tmp_path):
    """Objects shared by reference, nested: 2 million values from a small data.pkl. Copying them all
    out froze the daemon's loop for seconds per look; past the value budget it is simply corrupt."""
    payload = pickle.dumps(_shared_reference_bomb(), protocol=2)
    assert len(payload) < 1000
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "bomb.pt", payload))
    assert info.kind is CkptKind.CORRUPT
    assert info.problem.startswith("data.pkl unreadable") and "plain values" in info.problem


def test_a_pickle_bomb_in_the_midepoch_record_is_unreadable(tmp_path):
    top = {"epoch": 0, "optimizer": {}, "yolo_supervisor_midepoch": {"epoch": 1, "bomb": _shared_reference_bomb()}}
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "mid.pt", pickle.dumps(top, protocol=2)))
    assert info.kind is CkptKind.CORRUPT and info.problem.startswith("data.pkl unreadable")


def _colliding_keys_pickle(count: int) -> bytes:
    """A dict whose int keys all hash alike (multiples of 2**61-1): each insert probes every earlier
    key, so building it is quadratic. Hand-written opcodes: EMPTY_DICT MARK (LONG1 k BININT1 0)* SETITEMS."""
    modulus = 2**61 - 1
    pairs = b"".join(b"\x8a\x10" + (i * modulus).to_bytes(16, "little", signed=True) + b"K\x00"
                     for i in range(1, count))
    inner = b"}(" + pairs + b"u"
    return b"\x80\x02}(X\x05\x00\x00\x00epochK\x03X\x04\x00\x00\x00bomb" + inner + b"u."


def test_a_dict_of_colliding_keys_stops_at_the_unpickling_deadline(tmp_path, monkeypatch):
    """Quadratic work in a few hundred KB (seconds unbounded); stopped at the budget, and corrupt.
    The budget is made small here so that the test shows the stop, not the machine's speed."""
    from supervisor.probes import checkpoint

    payload = _colliding_keys_pickle(20_000)
    monkeypatch.setattr(checkpoint, "UNPICKLE_BUDGET_S", 0.01, raising=False)
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "collide.pt", payload))
    assert info.kind is CkptKind.CORRUPT and "budget" in info.problem


def test_the_colliding_keys_pickle_is_a_real_checkpoint_dict_when_small(tmp_path):
    """The test above fails for its budget, not for a malformed pickle: a small one reads fine."""
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "small.pt", _colliding_keys_pickle(5)))
    assert info.kind is CkptKind.FINISHED and info.epoch == 3  # no optimizer: a stripped one


@pytest.mark.parametrize("epoch", [10**400, 2**63, 1_000_001, -2], ids=["400 digits", "2**63", "1000001", "-2"])
def test_an_epoch_out_of_range_is_corrupt(tmp_path, epoch):
    """A 400-digit epoch would overflow SQLite when the vault records how far the job got."""
    payload = pickle.dumps({"epoch": epoch, "optimizer": {}}, protocol=2)
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "e.pt", payload))
    assert info.kind is CkptKind.CORRUPT and "epoch" in info.problem and len(info.problem) < 300


def test_sets_in_a_checkpoint_are_stubs_never_built(tmp_path):
    payload = pickle.dumps({"epoch": 2, "optimizer": {}, "train_args": {"s": {1, 2}, "f": frozenset({3}), "k": 1}},
                           protocol=4)
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "s.pt", payload))
    assert info.kind is CkptKind.RESUMABLE and info.train_args == {"k": 1}


def test_what_cannot_be_read_is_reported_whole_and_never_raises(tmp_path):
    from supervisor.probes.checkpoint import CheckpointInfo, CkptKind

    missing = tmp_path / "none.pt"
    assert inspect_checkpoint(missing) == CheckpointInfo(missing, CkptKind.MISSING, None, False, None, 0,
                                                         f"{missing} does not exist")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert inspect_checkpoint(tmp_path / "empty.pt") == CheckpointInfo(
        tmp_path / "empty.pt", CkptKind.CORRUPT, None, False, None, 0, "empty file")
    (tmp_path / "file").write_bytes(b"x")
    under_a_file = tmp_path / "file" / "last.pt"                      # stat: ENOTDIR
    assert inspect_checkpoint(under_a_file) == CheckpointInfo(
        under_a_file, CkptKind.CORRUPT, None, False, None, 0, "cannot stat: Not a directory")
    folder = tmp_path / "folder.pt"                                   # open: EISDIR
    folder.mkdir()
    got = inspect_checkpoint(folder)
    assert got == CheckpointInfo(folder, CkptKind.CORRUPT, None, False, None, folder.stat().st_size,
                                 "cannot read: Is a directory")


# --------------------------------------------------------------------------- small hand-built checkpoints (issue 25)
# Each test below was written for mutants that survived scripts/mutation.sh's checkpoint group: the
# result of every less common corrupt kind asserted whole, deflated records, local headers that differ
# from the directory, storage references, and the mid-epoch record's wording.


class _Opaque:
    """An object of a class: the unpickler stubs it, and the plain copies drop it."""


def _checkpoint(path: Path, top: object, *, records: dict[str, bytes] | None = None,
                compression: int = zipfile.ZIP_STORED, pkl_name: str = "archive/data.pkl",
                persistent: dict[int, tuple] | None = None) -> Path:
    """A torch-shaped archive: ``pkl_name`` holding ``top`` pickled, plus ``records``. ``persistent``
    maps ``id()`` of objects in ``top`` to the persistent id torch would write for a tensor storage."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    if persistent:
        pickler.persistent_id = lambda obj: persistent.get(id(obj))
    pickler.dump(top)
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(pkl_name, buf.getvalue())
        for name, body in (records or {}).items():
            zf.writestr(name, body)
    return path


def _corrupt_info(path: Path, problem: str):
    from supervisor.probes.checkpoint import CheckpointInfo

    return CheckpointInfo(path, CkptKind.CORRUPT, None, False, None, path.stat().st_size, problem)


@pytest.mark.parametrize("top, problem", [
    ([1, 2], "top level is not a dict but list"),
    ({"optimizer": {}}, "no integer 'epoch' entry (got None)"),
    ({"epoch": True, "optimizer": {}}, "no integer 'epoch' entry (got True)"),
    ({"epoch": 2.0, "optimizer": {}}, "no integer 'epoch' entry (got 2.0)"),
    ({"epoch": -2, "optimizer": {}}, "impossible epoch -2"),
    ({"epoch": -2}, "impossible epoch -2"),                     # not a stripped one either
    ({"epoch": 1_000_001, "optimizer": {}}, "impossible epoch 1000001"),
], ids=["list", "no epoch", "bool epoch", "float epoch", "epoch -2", "epoch -2 without optimizer",
        "epoch past the maximum"])
def test_a_checkpoint_that_is_not_a_training_state_is_corrupt_with_its_path_size_and_reason(tmp_path, top, problem):
    path = _checkpoint(tmp_path / "c.pt", top)
    assert inspect_checkpoint(path) == _corrupt_info(path, problem)


@pytest.mark.parametrize("top, kind, epoch, has_opt", [
    ({"epoch": 0, "optimizer": {}}, CkptKind.RESUMABLE, 0, True),
    ({"epoch": 1_000_000, "optimizer": {}}, CkptKind.RESUMABLE, 1_000_000, True),
    ({"epoch": 4}, CkptKind.FINISHED, 4, False),                          # optimizer stripped, epoch kept
    ({"epoch": 4, "optimizer": None}, CkptKind.FINISHED, 4, False),
    ({"epoch": -1, "optimizer": {}}, CkptKind.FINISHED, -1, True),        # epoch -1: stripped
    ({"epoch": -1, "optimizer": None}, CkptKind.FINISHED, -1, False),     # what final_eval leaves
], ids=["epoch 0", "the last possible epoch", "no optimizer", "optimizer None", "epoch -1", "stripped"])
def test_the_kind_follows_ultralytics_strip_optimizer(tmp_path, top, kind, epoch, has_opt):
    from supervisor.probes.checkpoint import CheckpointInfo

    path = _checkpoint(tmp_path / "c.pt", {**top, "train_args": {"epochs": 9, "obj": _Opaque()}})
    assert inspect_checkpoint(path) == CheckpointInfo(path, kind, epoch, has_opt, {"epochs": 9},
                                                      path.stat().st_size)


def test_a_resumable_state_saved_from_non_finite_weights_is_diverged(tmp_path):
    from supervisor.probes.checkpoint import FINITE_KEY, CheckpointInfo

    diverged = _checkpoint(tmp_path / "d.pt", {"epoch": 3, "optimizer": {}, FINITE_KEY: False,
                                               "train_args": {"epochs": 9}, MIDEPOCH_KEY: _record(epoch=4)})
    assert inspect_checkpoint(diverged) == CheckpointInfo(
        diverged, CkptKind.DIVERGED, 3, True, {"epochs": 9}, diverged.stat().st_size,
        "its weights were NaN/Inf when it was saved (the training had diverged)", _record(epoch=4))
    finite = _checkpoint(tmp_path / "f.pt", {"epoch": 3, "optimizer": {}, FINITE_KEY: True})
    assert inspect_checkpoint(finite).kind is CkptKind.RESUMABLE
    # a finished (stripped) one is never resumed from anyway: it stays finished
    stripped = _checkpoint(tmp_path / "s.pt", {"epoch": -1, "optimizer": None, FINITE_KEY: False})
    assert inspect_checkpoint(stripped).kind is CkptKind.FINISHED


def _record(**changes) -> dict:
    return {"epoch": 3, "next_batch": 5, "batches": 20, "pass_key": 3, "batch_size": 8, **changes}


def test_a_mid_epoch_record_is_read_back_whole(tmp_path):
    from supervisor.probes.checkpoint import CheckpointInfo

    record = _record(next_batch=20, seed=0, tloss={"box": 1.5}, stub=_Opaque())
    path = _checkpoint(tmp_path / "m.pt", {"epoch": 2, "optimizer": {}, MIDEPOCH_KEY: record})
    plain = {k: v for k, v in record.items() if k != "stub"}
    assert inspect_checkpoint(path) == CheckpointInfo(path, CkptKind.RESUMABLE, 2, True, None,
                                                      path.stat().st_size, None, plain)
    # the same record without an optimizer: Ultralytics stripped it, nothing to resume from
    stripped = _checkpoint(tmp_path / "s.pt", {"epoch": 2, "optimizer": None, MIDEPOCH_KEY: record})
    assert inspect_checkpoint(stripped).kind is CkptKind.FINISHED


@pytest.mark.parametrize("record, problem", [
    ([1, 2], "mid-epoch record is not a mapping"),
    ({}, "mid-epoch record: bad or missing epoch, next_batch, batches, pass_key, batch_size"),
    (_record(next_batch=-1), "mid-epoch record: bad or missing next_batch"),
    (_record(batches=True, batch_size="8"), "mid-epoch record: bad or missing batches, batch_size"),
    (_record(pass_key=2**31), "mid-epoch record: bad or missing pass_key"),
    (_record(batch_size=2.0), "mid-epoch record: bad or missing batch_size"),
    (_record(epoch=2), "mid-epoch record inconsistent: epoch 2 batch 5/20 in a checkpoint of epoch 2"),
    (_record(next_batch=0), "mid-epoch record inconsistent: epoch 3 batch 0/20 in a checkpoint of epoch 2"),
    (_record(next_batch=21), "mid-epoch record inconsistent: epoch 3 batch 21/20 in a checkpoint of epoch 2"),
], ids=["list", "empty", "negative batch", "bool and str", "past the maximum", "float", "another epoch",
        "no batch done", "past the last batch"])
def test_an_unusable_mid_epoch_record_is_corrupt_and_says_what_is_wrong(tmp_path, record, problem):
    path = _checkpoint(tmp_path / "m.pt", {"epoch": 2, "optimizer": {}, MIDEPOCH_KEY: record})
    assert inspect_checkpoint(path) == _corrupt_info(path, problem)


def test_train_args_that_are_not_a_mapping_are_none_and_an_ordered_dict_is_read(tmp_path):
    from collections import OrderedDict

    listed = _checkpoint(tmp_path / "l.pt", {"epoch": 1, "optimizer": {}, "train_args": ["epochs", 9]})
    assert inspect_checkpoint(listed).kind is CkptKind.RESUMABLE and inspect_checkpoint(listed).train_args is None
    ordered = _checkpoint(tmp_path / "o.pt", {"epoch": 1, "optimizer": {}, "train_args": OrderedDict(epochs=9)})
    assert inspect_checkpoint(ordered).train_args == {"epochs": 9}  # the one real class a checkpoint may build


def test_the_mid_epoch_record_accepts_the_bounds_of_its_fields(tmp_path):
    top = {"epoch": -1, "optimizer": {}, MIDEPOCH_KEY: _record(epoch=0, next_batch=2**31 - 1, batches=2**31 - 1,
                                                                pass_key=0, batch_size=2**31 - 1)}
    info = inspect_checkpoint(_checkpoint(tmp_path / "m.pt", top))
    assert info.kind is CkptKind.RESUMABLE and info.position == (0, 2**31 - 1), info.problem
    one_batch = {"epoch": 2, "optimizer": {}, MIDEPOCH_KEY: _record(next_batch=1)}
    assert inspect_checkpoint(_checkpoint(tmp_path / "one.pt", one_batch)).position == (3, 1)


def test_a_deflated_archive_is_checked_record_by_record_like_a_stored_one(tmp_path):
    """Torch never compresses, but a repacked archive may: its records are inflated and CRC-checked."""
    from supervisor.probes.checkpoint import CHUNK

    big = os.urandom(CHUNK) + bytes(CHUNK // 2)  # more than one read of the CRC loop
    good = _checkpoint(tmp_path / "good.pt", {"epoch": 1, "optimizer": {}}, records={"archive/data/0": big},
                       compression=zipfile.ZIP_DEFLATED)
    assert inspect_checkpoint(good).kind is CkptKind.RESUMABLE, inspect_checkpoint(good).problem
    start, length = record_data_offset(good, "archive/data/0")
    data = bytearray(good.read_bytes())
    data[start + length // 2] ^= 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    info = inspect_checkpoint(tmp_path / "bad.pt")
    assert info.kind is CkptKind.CORRUPT and info.size == len(data)
    assert info.problem.startswith("unreadable record archive/data/0: "), info.problem


def test_a_record_is_read_after_its_own_local_header_not_the_directorys_idea_of_it(tmp_path):
    """A zip64 local header carries an extra field the central directory does not: the record's bytes
    start after the local one (a CRC taken at the directory's offset would call a good file corrupt)."""
    path = tmp_path / "z64.pt"
    body = os.urandom(5000)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"epoch": 0, "optimizer": {}}, protocol=2))
        with zf.open("archive/data/0", "w", force_zip64=True) as out:
            out.write(body)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/0")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local_extra = struct.unpack("<H", f.read(30)[28:30])[0]
    assert local_extra > len(info.extra)  # the case this test is about
    assert inspect_checkpoint(path).kind is CkptKind.RESUMABLE, inspect_checkpoint(path).problem


def _patch_directory_entry(path: Path, name: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of ``name``'s central directory entry (``offset`` bytes into it)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        at = zf.start_dir
    while True:
        assert data[at:at + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack("<3H", data[at + 28:at + 34])
        if data[at + 46:at + 46 + name_len].decode() == name:
            struct.pack_into(fmt, data, at + offset, value)
            path.write_bytes(bytes(data))
            return
        at += 46 + name_len + extra_len + comment_len


def test_a_record_whose_local_header_is_damaged_is_corrupt(tmp_path):
    path = _checkpoint(tmp_path / "h.pt", {"epoch": 0, "optimizer": {}}, records={"archive/data/0": b"x" * 100})
    start, _ = record_data_offset(path, "archive/data/0")
    with zipfile.ZipFile(path) as zf:
        header = zf.getinfo("archive/data/0").header_offset
    data = bytearray(path.read_bytes())
    data[header:header + 4] = b"PK\x00\x00"
    path.write_bytes(bytes(data))
    assert inspect_checkpoint(path) == _corrupt_info(path, "bad local header for record archive/data/0")
    # a directory entry pointing into the last bytes of the file: too short for a local header
    short = _checkpoint(tmp_path / "s.pt", {"epoch": 0, "optimizer": {}}, records={"archive/data/0": b"x" * 100})
    _patch_directory_entry(short, "archive/data/0", 42, "<L", short.stat().st_size - 10)
    assert inspect_checkpoint(short) == _corrupt_info(short, "bad local header for record archive/data/0")


def test_a_record_the_directory_says_runs_past_the_end_is_truncated(tmp_path):
    path = _checkpoint(tmp_path / "r.pt", {"epoch": 0, "optimizer": {}}, records={"archive/data/0": b"x" * 100})
    for field in (20, 24):  # compressed and uncompressed size
        _patch_directory_entry(path, "archive/data/0", field, "<L", path.stat().st_size)
    assert inspect_checkpoint(path) == _corrupt_info(
        path, "truncated: record archive/data/0 runs past the end of the file")


def test_a_directory_the_zip_reader_cannot_decode_is_damaged(tmp_path):
    """A name flagged UTF-8 that is not: the zip reader raises a ValueError, not BadZipFile."""
    path = _checkpoint(tmp_path / "u.pt", {"epoch": 0, "optimizer": {}})
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, entry + 8)[0]
    struct.pack_into("<H", data, entry + 8, flags | 0x800)  # bit 11: the name is UTF-8
    data[entry + 46] = 0xFF                                    # its first byte cannot start a character
    path.write_bytes(bytes(data))
    assert inspect_checkpoint(path) == _corrupt_info(
        path, "damaged zip directory: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")


@pytest.mark.parametrize("names", [[], ["a/data.pkl", "b/data.pkl"]], ids=["none", "two"])
def test_an_archive_without_exactly_one_data_pkl_is_not_a_checkpoint(tmp_path, names):
    path = tmp_path / "n.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3\n")
        for name in names:
            zf.writestr(name, pickle.dumps({"epoch": 0, "optimizer": {}}))
    assert inspect_checkpoint(path) == _corrupt_info(
        path, f"not a torch checkpoint: {len(names)} data.pkl records (want 1)")


def test_a_data_pkl_at_the_top_of_the_archive_is_read(tmp_path):
    """No ``<stem>/`` folder: the pickle is ``data.pkl`` and its storages ``data/<key>``."""
    storage = bytearray(8)
    top = {"epoch": 1, "optimizer": {"w": storage}}
    path = _checkpoint(tmp_path / "t.pt", top, pkl_name="data.pkl", records={"data/0": b"\0" * 8},
                       persistent={id(storage): ("storage", "FloatStorage", "0", "cpu", 2)})
    assert inspect_checkpoint(path).kind is CkptKind.RESUMABLE, inspect_checkpoint(path).problem


def test_a_data_pkl_over_its_size_limit_is_unreadable(tmp_path, monkeypatch):
    from supervisor.probes import checkpoint

    path = _checkpoint(tmp_path / "big.pt", {"epoch": 0, "optimizer": {}, "pad": "x" * 200})
    with zipfile.ZipFile(path) as zf:
        size = zf.getinfo("archive/data.pkl").file_size
    monkeypatch.setattr(checkpoint, "MAX_DATA_PKL_BYTES", size)
    assert inspect_checkpoint(path).kind is CkptKind.RESUMABLE  # at the limit: read
    monkeypatch.setattr(checkpoint, "MAX_DATA_PKL_BYTES", size - 1)
    assert inspect_checkpoint(path) == _corrupt_info(
        path, f"data.pkl unreadable: {size} bytes, over the {size - 1} byte limit")


def test_every_storage_the_pickle_references_must_have_its_record(tmp_path):
    """torch writes a storage as persistent id ('storage', type, key, location, numel); its bytes are
    the record ``<stem>/data/<key>``. Every key is checked, and the first missing one is named."""
    a, b, c = bytearray(1), bytearray(2), bytearray(3)
    pids = {id(a): ("storage", "FloatStorage", "0", "cpu", 1), id(b): ("storage", "FloatStorage", "1", "cpu", 1),
            id(c): ("storage", "FloatStorage", "2", "cpu", 1)}
    top = {"epoch": 0, "optimizer": {"a": a, "b": b, "c": c}}
    whole = _checkpoint(tmp_path / "w.pt", top, persistent=pids,
                        records={f"archive/data/{k}": b"\0" * 4 for k in "012"})
    assert inspect_checkpoint(whole).kind is CkptKind.RESUMABLE, inspect_checkpoint(whole).problem
    two_gone = _checkpoint(tmp_path / "g.pt", top, persistent=pids, records={"archive/data/1": b"\0" * 4})
    assert inspect_checkpoint(two_gone) == _corrupt_info(
        two_gone, "missing tensor record archive/data/0 (2 referenced storages absent)")
    # a record of the right key under another stem is not the one referenced
    elsewhere = _checkpoint(tmp_path / "e.pt", {"epoch": 0, "optimizer": {"a": a}}, persistent=pids,
                            records={"other/data/0": b"\0" * 4})
    assert inspect_checkpoint(elsewhere) == _corrupt_info(
        elsewhere, "missing tensor record archive/data/0 (1 referenced storages absent)")


@pytest.mark.parametrize("pid", ["abc", ("storage", "FloatStorage"), ("storage", "FloatStorage", 7, "cpu", 1)],
                         ids=["a string", "a short tuple", "an int key"])
def test_a_persistent_id_that_is_not_a_torch_storage_reference_is_ignored(tmp_path, pid):
    """Only torch's shape names a record; anything else a hand-made pickle references becomes None."""
    thing = bytearray(1)
    path = _checkpoint(tmp_path / "p.pt", {"epoch": 0, "optimizer": {"a": thing}}, persistent={id(thing): pid})
    assert inspect_checkpoint(path).kind is CkptKind.RESUMABLE, inspect_checkpoint(path).problem


def test_the_shortest_storage_reference_names_its_record_too(tmp_path):
    thing = bytearray(1)
    path = _checkpoint(tmp_path / "p.pt", {"epoch": 0, "optimizer": {"a": thing}},
                       persistent={id(thing): ("storage", "FloatStorage", "k")})
    assert inspect_checkpoint(path) == _corrupt_info(
        path, "missing tensor record archive/data/k (1 referenced storages absent)")


def test_one_setitems_of_colliding_keys_is_stopped_inside_it(tmp_path, monkeypatch):
    """All the quadratic work in one opcode (SETITEMS of 8000 colliding keys, seconds here): the
    deadline is checked between its keys, not only between opcodes, so the read stops at the budget.
    Without that check the read runs to its end and the file reads as a whole (stripped) checkpoint."""
    from supervisor.probes import checkpoint

    modulus = 2**61 - 1
    pairs = b"".join(b"\x8a\x10" + (i * modulus).to_bytes(16, "little", signed=True) + b"K\x00"
                     for i in range(1, 8000))
    # the top-level dict itself, its epoch and the keys in the one SETITEMS, the last opcode before STOP
    payload = b"\x80\x02}(X\x05\x00\x00\x00epochK\x03" + pairs + b"u."
    # The SETITEMS takes about 0.5 s on this 2-core machine: a budget well under it, or a fast machine
    # finishes the opcode before a 0.5 s budget is spent and the check inside it goes untested.
    monkeypatch.setattr(checkpoint, "UNPICKLE_BUDGET_S", 0.05, raising=False)
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "collide.pt", payload))
    assert info.kind is CkptKind.CORRUPT and "budget" in info.problem, info


@pytest.mark.parametrize("proto", [0, 1])
def test_a_dict_built_by_the_dict_opcode_is_read(tmp_path, proto):
    """Protocols 0 and 1 build a dict with DICT (MARK key value ... DICT), which the reader handles
    itself to bound its work; hand-written here with its items inside, and as pickle writes it."""
    by_hand = b"(X\x05\x00\x00\x00epochK\x03X\x09\x00\x00\x00optimizer(dX\x04\x00\x00\x00seedK\x07d."
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "h.pt", by_hand))
    assert (info.kind, info.epoch, info.has_optimizer) == (CkptKind.RESUMABLE, 3, True), info.problem
    written = pickle.dumps({"epoch": 5, "optimizer": {}, "train_args": {"epochs": 9}}, protocol=proto)
    info = inspect_checkpoint(_zip_with_pickle(tmp_path / "w.pt", written))
    assert (info.kind, info.epoch, info.train_args) == (CkptKind.RESUMABLE, 5, {"epochs": 9}), info.problem


def test_a_pickle_nested_past_the_recursion_limit_is_corrupt(tmp_path):
    """Two equal keys, each a tuple nested 3000 deep: comparing them when the dict is built recurses
    past Python's limit. The reader says so, and the daemon keeps running."""
    deep = b"K\x00" + b"\x85" * 3000  # BININT1 0, then TUPLE1 3000 times
    path = _zip_with_pickle(tmp_path / "deep.pt", b"\x80\x02}(" + deep + b"K\x01" + deep + b"K\x02u.")
    assert inspect_checkpoint(path) == _corrupt_info(path, "data.pkl nests too deeply to read safely")


def test_a_malformed_pickle_names_the_error(tmp_path):
    path = _zip_with_pickle(tmp_path / "bad.pt", b"\x80\x09}.")
    assert inspect_checkpoint(path) == _corrupt_info(
        path, "data.pkl unreadable: ValueError: unsupported pickle protocol: 9")


def test_garbage_says_it_never_was_a_zip(tmp_path):
    path = tmp_path / "g.pt"
    path.write_bytes(b"\x00" * 4096)
    assert inspect_checkpoint(path) == _corrupt_info(
        path, "not a zip archive (no zip signature at the start): File is not a zip file")
