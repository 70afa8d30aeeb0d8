"""One experiment-tracker run per job across every attempt: the training process's side.

Ultralytics' tracker callbacks (``ultralytics/utils/callbacks/*.py``) open a new run in each
process. Here, before they run, each attempt is pointed at the job's one run (the ids come in the
plan, supervisor/jobs/trackers.py keeps them):

- MLflow: ``MLFLOW_RUN_ID`` from the second attempt on (``mlflow.start_run`` reads it). A resumed
  run already holds the first attempt's params, and MLflow refuses a changed value (``resume``
  changes), so on a resume only params the run lacks are logged.
- W&B: ``WANDB_RUN_ID`` + ``WANDB_RESUME=allow``, and the run is opened here with that id (and
  ``resume="allow"``) before Ultralytics' callback, which would otherwise choose a new id.
- Comet: ``COMET_EXPERIMENT_KEY``, chosen by the daemon at the first attempt.
- ClearML: the first attempt's task id is kept; later attempts create the task here with
  ``continue_last_task=<id>`` before Ultralytics' callback, which takes ``Task.current_task()``.
- TensorBoard: one log directory (the run's); a resumed attempt's writer purges every point from
  its first epoch on, so nothing a killed attempt logged past its checkpoint is shown twice.

No epoch is logged twice: each tracker's per-epoch logging is moved to run right after the
epoch's checkpoint is saved (Ultralytics logs the training losses before validation), and before
the supervisor's own epoch-end callback, which may end the attempt on SIGTERM. A resumed attempt
starts after the checkpoint's epoch, so what it logs is new. Every run's config gets a
``supervisor.attempt.N`` entry: why attempt N started.

``python -m supervisor.child.trackers finalize`` closes the MLflow run with the job's outcome; the
daemon starts it as the job's owner with the job's environment when the job ends.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

CALLBACK_MODULES = {
    "mlflow": "ultralytics.utils.callbacks.mlflow",
    "wandb": "ultralytics.utils.callbacks.wb",
    "comet": "ultralytics.utils.callbacks.comet",
    "clearml": "ultralytics.utils.callbacks.clearml",
    "tensorboard": "ultralytics.utils.callbacks.tensorboard",
}
TRACKER_OF_MODULE = {module: name for name, module in CALLBACK_MODULES.items()}
# Never taken from an owner's file or a job: they describe the file, not a choice.
UNSETTABLE = {"settings_version"}

WANDB_FLUSH_ENV, WANDB_FLUSH_S = "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL", "0.25"

_trackers_plan: dict[str, Any] = {}


class JobSettingsError(ValueError):
    """A job's ``settings:`` the installed Ultralytics does not take (the attempt fails as a config error)."""


def prepare(trackers_plan: dict[str, Any]) -> None:
    """Before Ultralytics is imported: pin the job's run ids in the environment (DDP ranks inherit
    it), then apply the job's Ultralytics settings."""
    global _trackers_plan
    _trackers_plan = trackers_plan or {}
    pin_environment(_trackers_plan.get("ids") or {}, os.environ)
    apply_settings(_trackers_plan.get("settings") or {})


def pin_environment(ids: dict[str, str], env: Any) -> None:
    """A value the job set itself (``env:``) wins: that user pinned their own run."""
    pins = {}
    if ids.get("wandb"):
        pins.update(WANDB_RUN_ID=ids["wandb"], WANDB_RESUME="allow")
        # wandb-core writes the run's data to disk every 15 s by default and a killed process loses
        # the rest (offline, that is all of it): write it every quarter second (its private setting
        # x_transaction_log_flush_interval; an older wandb ignores the name).
        pins[WANDB_FLUSH_ENV] = WANDB_FLUSH_S
    if ids.get("comet"):
        pins["COMET_EXPERIMENT_KEY"] = ids["comet"]
    if ids.get("mlflow"):
        pins["MLFLOW_RUN_ID"] = ids["mlflow"]
    for name, value in pins.items():
        env.setdefault(name, value)


def apply_settings(settings: dict[str, Any]) -> None:
    """The owner's settings (keys this Ultralytics knows, well typed), then the job's (all of them
    must be known here: JobSettingsError otherwise)."""
    owner, job = settings.get("owner") or {}, settings.get("job") or {}
    if not owner and not job:
        return
    from ultralytics import __version__
    from ultralytics.utils import SETTINGS

    known = SETTINGS.defaults
    SETTINGS.update({k: v for k, v in owner.items()
                     if k in known and k not in UNSETTABLE and isinstance(v, type(known[k]))})
    try:
        SETTINGS.update({k: v for k, v in job.items() if k not in UNSETTABLE})
    except (KeyError, TypeError) as err:
        raise JobSettingsError(f"the job's settings: {err.args[0] if err.args else err} "
                               f"(ultralytics {__version__})") from None


def install(model, reporter) -> None:
    """Add the callbacks that keep this attempt in the job's runs (after the supervisor's own)."""
    attempt = _Attempt(_trackers_plan, reporter)
    model.add_callback("on_pretrain_routine_start", _quiet(attempt.arrange, reporter))
    model.add_callback("on_pretrain_routine_end", _quiet(attempt.open_runs, reporter))


def _quiet(fn: Callable, reporter) -> Callable:
    """A tracker problem is reported, never what ends a training."""
    def wrapper(arg):
        try:
            fn(arg)
        except Exception as exc:  # noqa: BLE001 - the training goes on without that tracker's fix
            reporter.note(f"experiment trackers: {fn.__name__} failed: {exc!r}")
    wrapper.__name__ = fn.__name__
    return wrapper


def _tracker(fn: Callable) -> Optional[str]:
    return TRACKER_OF_MODULE.get(getattr(fn, "__module__", "") or "")


class _Attempt:
    """This attempt's part in the job's runs."""

    def __init__(self, plan: dict[str, Any], reporter):
        self.plan = plan
        self.rep = reporter
        self.active: set[str] = set()
        self.opened_wandb = False
        self.trained_epoch: Optional[int] = None  # the epoch whose training this attempt finished last

    # -- on_pretrain_routine_start: before any tracker callback has run ----------------------
    def arrange(self, trainer) -> None:
        """Log each epoch after its checkpoint, and learn the runs once the trackers opened them."""
        cbs = trainer.callbacks
        self.active = {t for fns in cbs.values() for t in map(_tracker, fns) if t}
        if not self.active:
            return
        if "clearml" in self.active:
            self._continue_clearml(trainer)
        at_train_end = [f for f in cbs["on_train_epoch_end"] if _tracker(f)]
        at_fit_end = [f for f in cbs["on_fit_epoch_end"] if _tracker(f)]
        cbs["on_train_epoch_end"] = [f for f in cbs["on_train_epoch_end"] if f not in at_train_end] \
            + [self.epoch_trained]
        others = [f for f in cbs["on_fit_epoch_end"] if f not in at_fit_end]
        cbs["on_fit_epoch_end"] = [self._after_training(f) for f in at_train_end + at_fit_end] \
            + [_quiet(self.flush, self.rep)] + others
        cbs["on_pretrain_routine_end"].append(_quiet(self.runs_opened, self.rep))
        cbs["on_train_end"].append(_quiet(self.finish, self.rep))

    def epoch_trained(self, trainer) -> None:
        self.trained_epoch = trainer.epoch

    def _after_training(self, fn: Callable) -> Callable:
        """``fn`` at the end of an epoch this attempt trained. Not at the re-validation of best.pt
        that ends a run (Ultralytics logs it at step epochs + 1): an ``extend`` would log that step
        again as a real epoch."""
        def after_training(trainer):
            if trainer.epoch == self.trained_epoch:
                fn(trainer)
        after_training.__qualname__ = f"after_training({getattr(fn, '__qualname__', fn)})"
        return after_training

    def _continue_clearml(self, trainer) -> None:
        """The job's task, created before Ultralytics' callback (which takes ``Task.current_task()``)."""
        task_id = (self.plan.get("ids") or {}).get("clearml")
        module = sys.modules[CALLBACK_MODULES["clearml"]]
        if not task_id or getattr(module, "Task", None) is None or module.Task.current_task() is not None:
            return
        # Ultralytics' own arguments (callbacks/clearml.py), and the job's task to continue.
        module.Task.init(project_name=str(trainer.args.project or "Ultralytics").lstrip("/") or "Ultralytics",
                         task_name=trainer.args.name, tags=["Ultralytics"], output_uri=True,
                         reuse_last_task_id=False, continue_last_task=task_id,
                         auto_connect_frameworks={"pytorch": False, "matplotlib": False})

    # -- on_pretrain_routine_end: before the trackers' own -----------------------------------
    def open_runs(self, trainer) -> None:
        if "wandb" in self.active:
            self._open_wandb(trainer)
        if "mlflow" in self.active and trainer.args.resume:
            module = sys.modules[CALLBACK_MODULES["mlflow"]]
            if module.mlflow is not None and not isinstance(module.mlflow, _KeepLoggedParams):
                module.mlflow = _KeepLoggedParams(module.mlflow)

    def _open_wandb(self, trainer) -> None:
        wb = sys.modules[CALLBACK_MODULES["wandb"]].wb
        run_id = os.environ.get("WANDB_RUN_ID")
        if wb is None or wb.run or not run_id:
            return
        # Ultralytics' own project name (callbacks/wb.py), and the job's id instead of a new one.
        wb.init(project=re.sub(r"[/\\#?%:]", "-", str(trainer.args.project or "Ultralytics"))[-128:],
                name=str(trainer.args.name), config=vars(trainer.args), id=run_id, resume="allow",
                dir=str(trainer.save_dir))
        for prefix in ("train", "lr", "metrics", "val"):
            wb.run.define_metric(f"{prefix}/*", step_metric="epoch")
        self.opened_wandb = True

    # -- on_pretrain_routine_end: after the trackers' own -------------------------------------
    def runs_opened(self, trainer) -> None:
        if "tensorboard" in self.active and trainer.start_epoch > 0:
            self._purge_tensorboard(trainer)
        runs = {}
        for tracker in sorted(self.active):
            run = RUN_READERS.get(tracker, lambda t: None)(trainer)
            if run is not None:
                runs[tracker] = run
        self._record_attempts(runs)
        self.rep.beat(force=True, trackers=runs)
        if runs:
            self.rep.note("experiment trackers: " + "; ".join(
                f"{t} {r['id']}" + (f" {r['url']}" if r.get("url") else "") for t, r in runs.items()))

    def _purge_tensorboard(self, trainer) -> None:
        """Points are logged at step epoch+1: drop every one from this attempt's first epoch on."""
        module = sys.modules[CALLBACK_MODULES["tensorboard"]]
        if module.WRITER is None:
            return
        module.WRITER.close()
        module.WRITER = module.SummaryWriter(str(trainer.save_dir), purge_step=trainer.start_epoch + 1)

    def _record_attempts(self, runs: dict[str, dict]) -> None:
        attempts = {f"supervisor.attempt.{a['attempt']}": str(a.get("cause"))[:250]
                    for a in self.plan.get("attempts") or [] if isinstance(a, dict) and "attempt" in a}
        if not attempts:
            return
        for tracker in runs:
            writer = ATTEMPT_WRITERS.get(tracker)
            if writer is not None:
                try:
                    writer(attempts)
                except Exception as exc:  # noqa: BLE001 - one tracker's failure leaves the others
                    self.rep.note(f"experiment trackers: {tracker}: recording the attempts failed: {exc!r}")

    # -- on_fit_epoch_end, right after the trackers logged the epoch --------------------------
    def flush(self, trainer) -> None:
        """The epoch is in the checkpoint: put its points on disk before a kill can lose them."""
        module = sys.modules.get(CALLBACK_MODULES["tensorboard"])
        if module is not None and getattr(module, "WRITER", None) is not None:
            module.WRITER.flush()

    # -- on_train_end, after the trackers' own ------------------------------------------------
    def finish(self, trainer) -> None:
        if self.opened_wandb:
            sys.modules[CALLBACK_MODULES["wandb"]].wb.finish()


class _KeepLoggedParams:
    """mlflow, with ``log_params`` logging only the params the active run lacks: the first attempt's
    values stay (MLflow refuses to change one), and the attempt records say what changed."""

    def __init__(self, mlflow):
        self._mlflow = mlflow

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mlflow, name)

    def log_params(self, params: dict[str, Any], *args, **kwargs) -> Any:
        run = self._mlflow.active_run()
        logged = self._mlflow.get_run(run.info.run_id).data.params if run is not None else {}
        return self._mlflow.log_params({k: v for k, v in params.items() if k not in logged}, *args, **kwargs)


# -- each tracker's run, as Ultralytics opened it ------------------------------------------
def _mlflow_run(trainer) -> Optional[dict[str, Any]]:
    mlflow = sys.modules[CALLBACK_MODULES["mlflow"]].mlflow
    run = mlflow.active_run() if mlflow is not None and getattr(trainer, "_mlflow_active", False) else None
    if run is None:
        return None
    uri = _without_credentials(mlflow.get_tracking_uri())
    url = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" \
        if uri.startswith(("http://", "https://")) else uri
    os.environ["MLFLOW_RUN_ID"] = run.info.run_id  # a later start_run in this process continues it too
    return {"id": run.info.run_id, "url": url}


def _without_credentials(uri: str) -> str:
    """A tracking URI as shown in status and notifications: never its user:password part."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def _wandb_run(trainer) -> Optional[dict[str, Any]]:
    wb = sys.modules[CALLBACK_MODULES["wandb"]].wb
    if wb is None or wb.run is None:
        return None
    return {"id": wb.run.id, "url": getattr(wb.run, "url", None) or os.path.dirname(wb.run.dir)}


def _comet_run(trainer) -> Optional[dict[str, Any]]:
    comet_ml = sys.modules[CALLBACK_MODULES["comet"]].comet_ml
    experiment = comet_ml.get_running_experiment() if comet_ml is not None else None
    if experiment is None:
        return None
    return {"id": experiment.get_key(), "url": getattr(experiment, "url", None)}


def _clearml_run(trainer) -> Optional[dict[str, Any]]:
    task_class = getattr(sys.modules[CALLBACK_MODULES["clearml"]], "Task", None)
    task = task_class.current_task() if task_class is not None else None
    if task is None:
        return None
    try:
        url = task.get_output_log_web_page()
    except Exception:  # noqa: BLE001 - offline, or a server that does not say
        url = None
    return {"id": task.id, "url": url}


def _tensorboard_run(trainer) -> Optional[dict[str, Any]]:
    module = sys.modules[CALLBACK_MODULES["tensorboard"]]
    return {"id": str(trainer.save_dir), "url": None} if getattr(module, "WRITER", None) is not None else None


RUN_READERS: dict[str, Callable[[Any], Optional[dict[str, Any]]]] = {
    "mlflow": _mlflow_run, "wandb": _wandb_run, "comet": _comet_run, "clearml": _clearml_run,
    "tensorboard": _tensorboard_run,
}


def _mlflow_attempts(attempts: dict[str, str]) -> None:
    mlflow = sys.modules[CALLBACK_MODULES["mlflow"]].mlflow
    run = mlflow.active_run()
    logged = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in attempts.items() if k not in logged})


def _wandb_attempts(attempts: dict[str, str]) -> None:
    sys.modules[CALLBACK_MODULES["wandb"]].wb.run.config.update(attempts, allow_val_change=True)


def _comet_attempts(attempts: dict[str, str]) -> None:
    sys.modules[CALLBACK_MODULES["comet"]].comet_ml.get_running_experiment().log_parameters(attempts)


def _clearml_attempts(attempts: dict[str, str]) -> None:
    task = sys.modules[CALLBACK_MODULES["clearml"]].Task.current_task()
    task.connect({k.removeprefix("supervisor.attempt."): v for k, v in attempts.items()}, name="supervisor attempts")


def _tensorboard_attempts(attempts: dict[str, str]) -> None:
    writer = sys.modules[CALLBACK_MODULES["tensorboard"]].WRITER
    writer.add_text("supervisor/attempts", "\n\n".join(f"{k}: {v}" for k, v in attempts.items()),
                    global_step=len(attempts))


ATTEMPT_WRITERS: dict[str, Callable[[dict[str, str]], None]] = {
    "mlflow": _mlflow_attempts, "wandb": _wandb_attempts, "comet": _comet_attempts,
    "clearml": _clearml_attempts, "tensorboard": _tensorboard_attempts,
}


# -- the finalizer -------------------------------------------------------------------------
def finalize(status: str, mlflow_run: Optional[str]) -> int:
    """Close the job's MLflow run with its outcome (FINISHED, FAILED, KILLED)."""
    if mlflow_run:
        from mlflow.tracking import MlflowClient

        MlflowClient().set_terminated(mlflow_run, status=status)
        print(f"yolo-supervisor: MLflow run {mlflow_run} set {status}", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.child.trackers")
    sub = parser.add_subparsers(dest="command", required=True)
    fin = sub.add_parser("finalize", help="close the job's tracker runs with its outcome")
    fin.add_argument("--status", required=True, choices=["FINISHED", "FAILED", "KILLED"])
    fin.add_argument("--mlflow", default=None, metavar="RUN_ID")
    args = parser.parse_args(argv)
    return finalize(args.status, args.mlflow)


if __name__ == "__main__":
    sys.exit(main())
