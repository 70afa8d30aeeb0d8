"""Checkpoint probe: is this ``.pt`` file intact, resumable, finished, or junk?

Runs inside the daemon, so it must never import torch or ultralytics and never
execute anything a pickle asks for. A torch checkpoint is a zip archive of
stored (uncompressed) records: ``<stem>/data.pkl`` (the object graph) plus one
record per tensor storage (``<stem>/data/<key>``). We

1. CRC-check every record ourselves, straight from the file (a flipped byte in a
   tensor record passes ``torch.load`` but not its CRC, and a truncated file has
   no central directory at all);
2. unpickle ``data.pkl`` with an unpickler that resolves every global to an inert
   stub and every tensor storage to ``None``, which is enough to read ``epoch``,
   whether ``optimizer`` is present, and ``train_args``.

The file is the job user's, so reading it is bounded like any other untrusted input: ``data.pkl``
of at most ``MAX_DATA_PKL_BYTES``, unpickled within ``UNPICKLE_BUDGET_S`` (a pickle can make a
dict of keys whose hashes collide: quadratic work in a few hundred KB), and the plain copy of
``train_args`` and the mid-epoch record of at most ``MAX_PLAIN_VALUES`` values (a pickle shares
objects by reference, so 151 bytes can name 2**40 of them). A checkpoint past a bound is
unreadable, exactly as a corrupt one is.
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from supervisor.contract import FINITE_KEY, MIDEPOCH_KEY  # what the child writes (the contract names them)

CHUNK = 1 << 20  # CRC streaming chunk: big enough to amortise syscalls, small enough for RAM
# Bounds on reading what the job's user wrote. A YOLO checkpoint's data.pkl is 0.2-2 MB (the
# tensors are records of their own) and unpickles in about 50 ms; train_args is ~100 values.
MAX_DATA_PKL_BYTES = 64 << 20
UNPICKLE_BUDGET_S = 5.0
MAX_PLAIN_VALUES = 100_000
MAX_EPOCH = 1_000_000       # an epoch past this is not a training's
MAX_COUNT = 2**31 - 1       # batches, batch sizes and keys of the mid-epoch record

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"




class CkptKind(str, Enum):
    RESUMABLE = "resumable"  # epoch >= 0 and optimizer state present (or a mid-epoch record)
    FINISHED = "finished"    # stripped by Ultralytics' final_eval: epoch -1 / no optimizer
    DIVERGED = "diverged"    # whole, but saved from non-finite weights: never resumed from
    CORRUPT = "corrupt"      # unreadable, truncated, CRC mismatch, or not a checkpoint dict
    MISSING = "missing"      # no such file


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    kind: CkptKind
    epoch: Optional[int]             # raw ckpt["epoch"]: 0-based last completed epoch; -1 when stripped
    has_optimizer: bool
    train_args: Optional[dict]       # only plain JSON-able values
    size: int
    problem: Optional[str] = None    # what is wrong, for corrupt/missing
    midepoch: Optional[dict] = None  # a mid-epoch state: {"epoch" (0-based, interrupted), "next_batch", ...}

    @property
    def is_resumable(self) -> bool:
        return self.kind is CkptKind.RESUMABLE

    @property
    def position(self) -> tuple[int, int]:
        """(completed epochs, batches done in the next epoch): what a resume from here skips."""
        done = self.epochs_done or 0
        return (done, int(self.midepoch["next_batch"])) if self.midepoch else (done, 0)

    @property
    def trained(self) -> tuple[int, int]:
        """(completed epochs, images trained in the next epoch): how states are ordered. Not batches: a
        resume with another batch size (``on_oom: reduce_batch``) numbers the same images differently."""
        done = self.epochs_done or 0
        if not self.midepoch:
            return (done, 0)
        m = self.midepoch
        world = m.get("world_size")
        world = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else 1
        return (done, int(m["next_batch"]) * int(m["batch_size"]) * world)

    def where(self) -> str:
        """"epoch 3" for an epoch-level state, "epoch 4 batch 120/240" for a mid-epoch one (1-based)."""
        if self.midepoch:
            m = self.midepoch
            return f"epoch {m['epoch'] + 1} batch {m['next_batch']}/{m.get('batches', '?')}"
        return f"epoch {self.epochs_done}"

    @property
    def epochs_done(self) -> Optional[int]:
        """Completed epochs a resume starts after (it restarts at epochs_done + 1, 1-based)."""
        return self.epoch + 1 if self.is_resumable and self.epoch is not None else None


class CorruptCheckpoint(Exception):
    """Raised internally with the human sentence that becomes ``CheckpointInfo.problem``."""


# --------------------------------------------------------------------------- public entry


def inspect_checkpoint(path: Union[str, Path]) -> CheckpointInfo:
    """Verify ``path`` completely and classify it. Never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return CheckpointInfo(path, CkptKind.MISSING, None, False, None, 0, f"{path} does not exist")
    except OSError as e:
        return _corrupt(path, 0, f"cannot stat: {e.strerror or e}")
    if size == 0:
        return _corrupt(path, 0, "empty file")
    try:
        with open(path, "rb") as f:
            top = _read_verified(f, size)
        return _classify(path, size, top)
    except CorruptCheckpoint as e:
        return _corrupt(path, size, str(e))
    except OSError as e:
        return _corrupt(path, size, f"cannot read: {e.strerror or e}")


_VERIFIED: "dict[Path, tuple[tuple[int, ...], CheckpointInfo]]" = {}
_VERIFIED_MAX = 128


def inspect_checkpoint_cached(path: Union[str, Path]) -> CheckpointInfo:
    """``inspect_checkpoint``, but a file already verified and unchanged since (same inode, size,
    mtime and ctime) is not read again: a restart does not re-verify a 200 MB vault copy."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        _VERIFIED.pop(path, None)
        return inspect_checkpoint(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _VERIFIED.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    info = inspect_checkpoint(path)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.pop(next(iter(_VERIFIED)))
    _VERIFIED[path] = (key, info)
    return info


def _corrupt(path: Path, size: int, problem: str) -> CheckpointInfo:
    return CheckpointInfo(path, CkptKind.CORRUPT, None, False, None, size, problem)


def _classify(path: Path, size: int, top: Any) -> CheckpointInfo:
    """Turn the unpickled top-level object into a kind, following Ultralytics' strip_optimizer."""
    if not isinstance(top, dict):
        return _corrupt(path, size, f"top level is not a dict but {type(top).__name__}")
    epoch = top.get("epoch")
    if "epoch" not in top or isinstance(epoch, bool) or not isinstance(epoch, int):
        return _corrupt(path, size, f"no integer 'epoch' entry (got {_short(epoch)})")
    if not -1 <= epoch <= MAX_EPOCH:
        return _corrupt(path, size, f"impossible epoch {_short(epoch)}")
    has_opt = top.get("optimizer") is not None
    args = _jsonable(top.get("train_args"))
    args = args if isinstance(args, dict) else None
    midepoch = _midepoch_record(top.get(MIDEPOCH_KEY), epoch)
    if isinstance(midepoch, str):
        return _corrupt(path, size, midepoch)
    if midepoch is not None and has_opt:
        kind = CkptKind.RESUMABLE  # epoch -1 here means "inside the first epoch", not "stripped"
    elif epoch == -1 or not has_opt:
        kind = CkptKind.FINISHED   # strip_optimizer sets epoch=-1 and optimizer=None together
    elif epoch >= 0:
        kind = CkptKind.RESUMABLE
    else:
        return _corrupt(path, size, f"impossible epoch {epoch}")
    if kind is CkptKind.RESUMABLE and top.get(FINITE_KEY) is False:
        return CheckpointInfo(path, CkptKind.DIVERGED, epoch, has_opt, args, size,
                              "its weights were NaN/Inf when it was saved (the training had diverged)", midepoch)
    return CheckpointInfo(path, kind, epoch, has_opt, args, size, None, midepoch)


def _midepoch_record(raw: Any, epoch: int) -> Union[dict, str, None]:
    """The plain mid-epoch record, None when there is none, or the sentence saying why it is unusable."""
    if raw is None:
        return None
    record = _jsonable(raw)
    if not isinstance(record, dict):
        return "mid-epoch record is not a mapping"
    ints = {k: record.get(k) for k in ("epoch", "next_batch", "batches", "pass_key", "batch_size")}
    bad = [k for k, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT]
    if bad:
        return f"mid-epoch record: bad or missing {', '.join(bad)}"
    # next_batch == batches: saved on SIGTERM after the epoch's last batch, before its validation
    if record["epoch"] != epoch + 1 or not 0 < record["next_batch"] <= record["batches"]:
        return (f"mid-epoch record inconsistent: epoch {record['epoch']} batch {record['next_batch']}"
                f"/{record['batches']} in a checkpoint of epoch {epoch}")
    return record


# --------------------------------------------------------------------------- zip + CRC


def _read_verified(f, size: int) -> Any:
    """CRC-check every record of the archive in ``f``, then return the unpickled data.pkl."""
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise CorruptCheckpoint(_not_a_zip(f, e)) from None
    except (EOFError, struct.error, ValueError) as e:
        raise CorruptCheckpoint(f"damaged zip directory: {e}") from None
    with zf:
        infos = zf.infolist()
        pkl = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise CorruptCheckpoint(f"not a torch checkpoint: {len(pkl)} data.pkl records (want 1)")
        buf = bytearray(CHUNK)
        for info in infos:
            _check_record(f, zf, info, size, buf)
        if pkl[0].file_size > MAX_DATA_PKL_BYTES:
            raise CorruptCheckpoint(f"data.pkl unreadable: {pkl[0].file_size} bytes, over the "
                                    f"{MAX_DATA_PKL_BYTES} byte limit")
        data = zf.read(pkl[0])  # already CRC-verified above
    prefix = pkl[0].filename[: -len("data.pkl")]
    names = {i.filename for i in infos}
    return _safe_unpickle(data, prefix, names)


def _not_a_zip(f, err: Exception) -> str:
    """Tell a cut-off archive (starts like a zip) from a file that never was one."""
    f.seek(0)
    if f.read(4) == _LOCAL_MAGIC:
        return "truncated: not a zip archive (end of central directory missing)"
    return f"not a zip archive (no zip signature at the start): {err}"


def _check_record(f, zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, buf: bytearray) -> None:
    """Compare one record's CRC with the directory's, naming the record when it differs."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        # torch never compresses, but a repacked archive might: let zipfile inflate it
        try:
            with zf.open(info) as member:
                crc = 0
                while chunk := member.read(CHUNK):
                    crc = zlib.crc32(chunk, crc)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise CorruptCheckpoint(f"unreadable record {name}: {e}") from None
    else:
        start = _data_offset(f, info, size)
        crc = _crc_range(f, start, info.file_size, buf, name)
    if crc != info.CRC:
        raise CorruptCheckpoint(f"CRC mismatch in record {name}")


def _data_offset(f, info: zipfile.ZipInfo, size: int) -> int:
    """Where a record's bytes start: after its local header, whose lengths may differ from the directory's."""
    f.seek(info.header_offset)
    head = f.read(_LOCAL_HEADER.size)
    if len(head) != _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
        raise CorruptCheckpoint(f"bad local header for record {info.filename}")
    fields = _LOCAL_HEADER.unpack(head)
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    if start + info.file_size > size:
        raise CorruptCheckpoint(f"truncated: record {info.filename} runs past the end of the file")
    return start


def _crc_range(f, start: int, length: int, buf: bytearray, name: str) -> int:
    """zlib.crc32 of ``length`` bytes at ``start``, read into one reused buffer (no per-chunk allocation)."""
    f.seek(start)
    view = memoryview(buf)
    crc = 0
    while length > 0:
        n = f.readinto(view[: min(length, CHUNK)])
        if not n:
            raise CorruptCheckpoint(f"truncated: record {name} ends early")
        crc = zlib.crc32(view[:n], crc)
        length -= n
    return crc


# --------------------------------------------------------------------------- safe unpickling


class _Inert:
    """Stands in for every class or function a pickle names; accepts any use and does nothing.

    REDUCE calls it, NEWOBJ calls ``__new__``, BUILD ``__setstate__``, SETITEM(S)
    ``__setitem__``, APPEND(S) ``append``/``extend``. Instances are also callable
    so a stub produced by one REDUCE can serve as the callable of another.
    """

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return "<inert>"


class _Dict(dict):
    """OrderedDict stand-in: a real dict (so mappings read naturally) that ignores BUILD state
    such as torch's ``_metadata`` attribute on state dicts."""

    def __setstate__(self, state):
        pass


# The only real callables a checkpoint may reach: containers whose construction runs no user code.
_ALLOWED = {
    ("collections", "OrderedDict"): _Dict,
}


class _OverBudget(Exception):
    """Reading the pickle took more than its budget of time or values."""


def _counted(op):
    """An opcode handler that first checks the unpickling deadline (every ``_CHECK_EVERY`` ops)."""
    def handler(self: "_SafeUnpickler") -> None:
        self.ops -= 1
        if self.ops <= 0:
            self.ops = _CHECK_EVERY
            self.check_deadline()
        op(self)
    return handler


_CHECK_EVERY = 1024


class _SafeUnpickler(pickle._Unpickler):
    """Unpickler that never resolves a real global, never loads tensor data, and stops at its deadline.

    The pure-Python unpickler (CPython's own ``pickle._Unpickler``), because only it can be stopped
    between opcodes: each opcode is counted, and the ones that insert many hashed keys at once
    check the deadline per key. Sets are never built (a checkpoint's plain values have none).
    """

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.storage_keys: set[str] = set()
        self.deadline = time.monotonic() + UNPICKLE_BUDGET_S
        self.ops = _CHECK_EVERY
        self.dispatch = _DISPATCH

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"over the {UNPICKLE_BUDGET_S:g}s budget for reading it")

    def find_class(self, module: str, name: str):
        return _ALLOWED.get((module, name), _Inert)

    def persistent_load(self, pid):
        # torch: ('storage', storage_type, key, location, numel); remember the key to check it exists
        if isinstance(pid, tuple) and len(pid) >= 3 and isinstance(pid[2], str):
            self.storage_keys.add(pid[2])
        return None

    def _insert(self, target: dict, items: list) -> None:
        for i in range(0, len(items) - 1, 2):
            if i % _CHECK_EVERY == 0:
                self.check_deadline()
            target[items[i]] = items[i + 1]

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._insert(self.stack[-1], items)

    def load_dict(self) -> None:
        items, d = self.pop_mark(), {}
        self._insert(d, items)
        self.append(d)

    def load_empty_set(self) -> None:
        self.append(_Inert())

    def load_additems(self) -> None:
        self.pop_mark()

    def load_frozenset(self) -> None:
        self.pop_mark()
        self.append(_Inert())


_OWN = {pickle.SETITEMS[0]: _SafeUnpickler.load_setitems, pickle.DICT[0]: _SafeUnpickler.load_dict,
        pickle.EMPTY_SET[0]: _SafeUnpickler.load_empty_set, pickle.ADDITEMS[0]: _SafeUnpickler.load_additems,
        pickle.FROZENSET[0]: _SafeUnpickler.load_frozenset}
_DISPATCH = {code: _counted(_OWN.get(code, op)) for code, op in pickle._Unpickler.dispatch.items()}


def _safe_unpickle(data: bytes, prefix: str, names: set[str]) -> Any:
    unpickler = _SafeUnpickler(data)
    try:
        top = unpickler.load()
    except RecursionError:
        raise CorruptCheckpoint("data.pkl nests too deeply to read safely") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, TypeError, _OverBudget, ...
        raise CorruptCheckpoint(f"data.pkl unreadable: {type(e).__name__}: {_short(e)}") from None
    missing = sorted(k for k in unpickler.storage_keys if f"{prefix}data/{k}" not in names)
    if missing:
        raise CorruptCheckpoint(f"missing tensor record {prefix}data/{missing[0]} "
                                f"({len(missing)} referenced storages absent)")
    return top


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` keeping only plain JSON-able data (stubs and other objects are dropped);
    ``CorruptCheckpoint`` past ``MAX_PLAIN_VALUES`` values."""
    try:
        return _plain(value, 0, [MAX_PLAIN_VALUES])
    except _OverBudget:
        raise CorruptCheckpoint(f"data.pkl unreadable: over {MAX_PLAIN_VALUES} plain values "
                                "(objects shared by reference many times over?)") from None


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _OverBudget()
    if depth > 20:
        return _DROP
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1, budget) for v in value]
        return [v for v in items if v is not _DROP]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _plain(v, depth + 1, budget)
            if isinstance(k, str) and v is not _DROP:
                out[k] = v
        return out
    return _DROP


def _short(value: Any, limit: int = 200) -> str:
    """``repr`` of something read from the file, cut short (a 400-digit epoch is not a message)."""
    try:
        text = repr(value) if not isinstance(value, BaseException) else str(value)
    except Exception:  # e.g. an int over the digit limit for str()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


_DROP = object()


__all__ = ["CkptKind", "CheckpointInfo", "inspect_checkpoint", "inspect_checkpoint_cached", "CHUNK"]
