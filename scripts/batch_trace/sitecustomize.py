"""Records every trained batch of a training process, from inside it (tests and benchmarks only).

Put this directory on PYTHONPATH and set TRACE_BATCHES to a file: each batch Ultralytics trains in
``python -m supervisor.child.train`` or the ``yolo`` CLI appends one JSON line (pid, time, 0-based
epoch, batch index, batches per epoch, the image files, lr, running loss mean, last_opt_step), and
each time a file named ``midepoch.pt`` is renamed into place (the end of a mid-epoch save) one line
``{"pid", "at", "saved": "midepoch.pt"}``. The batch line is written by a default callback, before
any callback the training adds, so a save at a batch end follows that batch's line.
tests/e2e/test_midepoch.py counts from it which images were trained, which twice and which never,
and which batches a save covered: what a mid-epoch resume must get right, measured without reading
the saved record.
"""

import json
import os
import sys
import time

_OUT = os.environ.get("TRACE_BATCHES")


def _install(callbacks):
    def on_train_batch_end(trainer):
        f = sys._getframe(1)
        while f is not None and f.f_code.co_name != "_do_train":
            f = f.f_back
        loc = f.f_locals
        rec = {"pid": os.getpid(), "at": time.time(), "epoch": int(loc["epoch"]), "i": int(loc["i"]),
               "nb": int(loc["nb"]),
               "files": [os.path.basename(p) for p in loc["batch"]["im_file"]],
               "lr": [g["lr"] for g in trainer.optimizer.param_groups][:1],
               "tloss": {k: float(v) for k, v in (trainer.tloss or {}).items()},
               "last_opt_step": int(loc["last_opt_step"])}
        _append(rec)

    callbacks["on_train_batch_end"].append(on_train_batch_end)


def _append(rec: dict) -> None:
    fd = os.open(_OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


def _trace_saves() -> None:
    """A line once a rename puts ``midepoch.pt`` in place: the save is then complete on disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if os.path.basename(os.fspath(dst)) == "midepoch.pt":
            _append({"pid": os.getpid(), "at": time.time(), "saved": "midepoch.pt"})

    os.replace = replace


def _is_training() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"supervisor.child.train" in args or any(a.endswith(b"/yolo") for a in args)


if _OUT and _is_training():
    import importlib.abc
    import importlib.machinery

    class _Finder(importlib.abc.MetaPathFinder):
        """Adds the callback to Ultralytics' default callbacks as their module is first imported."""

        def find_spec(self, name, path, target=None):
            if name != "ultralytics.utils.callbacks.base":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                _install(module.default_callbacks)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
    _trace_saves()
