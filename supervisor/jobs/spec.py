"""The job spec: a YAML file parsed into a frozen, validated value.

pydantic does the validation so that every error names the field and the
problem ("restart.max_restarts: Input should be greater than or equal to 0")
without a hand-written checker for each field.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from supervisor.jobs.slurm_options import SlurmOptions
from supervisor.jobs.trackers import settings_problems
from supervisor.jobs.notify_spec import JobNotify
from supervisor.process.jobenv import job_variable_problem

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_SPEC_BYTES = 64 * 1024
# A job file is a few dozen nodes. Aliases let 400 bytes stand for millions of them (six
# levels of ten), which the daemon would expand when it validates and stores the spec.
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 32
MAX_ENV_VARIABLES = 256

# Train arguments the supervisor owns: a user setting them would break resume.
MANAGED_TRAIN_KEYS = {"resume"}


class SpecError(ValueError):
    """A job spec is invalid. ``problems`` lists "field: message" strings."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    # allow_inf_nan=False: "stall_timeout: .nan" would turn stall detection off, and
    # "stop_grace: .inf" would mean a stopped job is never SIGKILLed.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Backoff(_Strict):
    initial: float = Field(5.0, ge=0, description="seconds before the first restart")
    max: float = Field(300.0, ge=0, description="cap on the delay")
    factor: float = Field(2.0, ge=1.0)


class RestartPolicy(_Strict):
    max_restarts: int = Field(5, ge=0, description="crash restarts before the job fails")
    max_no_progress: int = Field(2, ge=1, description="restarts in a row without a new epoch")
    max_setup_failures: int = Field(3, ge=0, description="retries of failures before the first batch")
    max_preemptions_without_progress: int = Field(
        10, ge=1, description="preempted attempts in a row without progress before the job is held")
    backoff: Backoff = Backoff()


class Health(_Strict):
    # "auto" derives the timeout from observed batch/validation/save intervals.
    stall_timeout: Union[Literal["auto"], float] = "auto"
    stall_floor: float = Field(120.0, gt=0, description="lower bound of the auto timeout")
    first_batch_timeout: float = Field(1800.0, gt=0, description="allowance before the first batch")
    stop_grace: float = Field(60.0, ge=0, description="seconds between TERM and KILL")
    gpu_release_timeout: float = Field(60.0, ge=0)
    gpu_release_tolerance_mib: int = Field(256, ge=0)

    @field_validator("stall_timeout")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v <= 0:
            raise ValueError("must be 'auto' or a positive number of seconds")
        return v


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_CHECKPOINT_EVERY = "10m"


def parse_duration(value: Any) -> float:
    """``90s``, ``10m``, ``1h``, a number of seconds, or ``0``/``off`` (0.0: disabled)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 10m, 90s, 1h, a number of seconds, or off")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("off", "0"):
        return 0.0
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: use 10m, 90s, 1h, a number of seconds, or off")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r}: a duration must be a finite number of seconds >= 0")
    return seconds


DEFAULT_GPU_FAILURE_WAIT = "10m"


class JobSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    # Any N free GPUs, chosen at the first launch and kept (declared before ``train``, whose
    # validator needs it: such a job names no ``device``).
    gpus: Optional[int] = Field(None, ge=1, description="any N free GPUs instead of train.device")
    priority: int = Field(0, description="queue order: higher first, then submission time")
    train: dict[str, Any]
    # Mid-epoch checkpoints: at the first batch end after this much time since the last save.
    checkpoint_every: Union[str, float] = DEFAULT_CHECKPOINT_EVERY
    restart: RestartPolicy = RestartPolicy()
    health: Health = Health()
    on_oom: Literal["retry", "reduce_batch"] = "retry"
    min_batch: int = Field(2, ge=1, description="floor for on_oom: reduce_batch")
    keep_checkpoints: int = Field(2, ge=1, description="verified copies kept outside weights/")
    on_gpu_failure: Literal["wait", "move"] = "wait"
    gpu_failure_wait: Union[str, float] = DEFAULT_GPU_FAILURE_WAIT
    notify: Optional[JobNotify] = Field(None, description="more notification targets, events to report")
    slurm: Optional[SlurmOptions] = Field(None, description="sbatch options (executor: slurm); ignored locally")
    # Secrets (API keys): stored in the 0600 database only; status, history, events and logs name them only.
    env: Optional[dict[str, str]] = Field(None, description="variables for the training's environment")
    env_file: Optional[str] = Field(None, description="a file of NAME=value lines the owner keeps, read as "
                                                      "the owner at each launch")
    settings: Optional[dict[str, Any]] = Field(None, description="Ultralytics settings over the owner's own "
                                                                 "settings.json (wandb: true, mlflow: false, ...)")

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        if env is None:
            return None
        if len(env) > MAX_ENV_VARIABLES:
            raise ValueError(f"more than {MAX_ENV_VARIABLES} variables")
        for name, value in env.items():
            problem = job_variable_problem(name)
            if problem:
                raise ValueError(f"{name[:64]!r}: {problem}")
            if "\0" in value:
                raise ValueError(f"{name}: the value holds a NUL byte")
        return env

    @field_validator("settings")
    @classmethod
    def _settings_keys(cls, settings: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        problems = settings_problems(settings or {})
        if problems:
            raise ValueError("; ".join(problems))
        return settings

    @field_validator("env_file")
    @classmethod
    def _env_file_path(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and (not path.startswith("/") or "\0" in path):
            raise ValueError("must be an absolute path (the file is read as the job's owner at each launch)")
        return path

    @field_validator("checkpoint_every", "gpu_failure_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        parse_duration(value)
        return value

    @property
    def checkpoint_every_s(self) -> float:
        return parse_duration(self.checkpoint_every)

    @property
    def gpu_failure_wait_s(self) -> float:
        return parse_duration(self.gpu_failure_wait)

    @field_validator("train")
    @classmethod
    def _train_args(cls, train: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        missing = [k for k in ("model", "data", "epochs") if k not in train]
        if missing:
            raise ValueError(f"missing required key(s): {', '.join(missing)}")
        for key in sorted(MANAGED_TRAIN_KEYS & train.keys()):
            raise ValueError(f"'{key}' is managed by the supervisor; remove it")
        unknown = sorted(set(train) - ultralytics_train_keys()) if ultralytics_train_keys() else []
        if unknown:
            raise ValueError(f"unknown Ultralytics argument(s): {', '.join(unknown)}")
        epochs = train["epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError("'epochs' must be a positive integer")
        for key in ("model", "data"):
            if not isinstance(train[key], str) or not train[key]:
                raise ValueError(f"'{key}' must be a non-empty string")
        out = dict(train)
        if info.data.get("gpus"):
            if "device" in train:
                raise ValueError("'device' and the top-level 'gpus' both choose GPUs: name them "
                                 "(device: 0,1) or ask for a number of free ones (gpus: 2), not both")
            return out  # the daemon picks the set at the first launch
        out["device"] = normalize_device(train.get("device", "cpu"))
        if any(part.startswith("-") for part in out["device"].split(",")):
            raise ValueError("'device: -1' lets Ultralytics pick idle GPUs behind the daemon's back; ask the "
                             "daemon for free ones instead (top-level gpus: N)")
        return out

    @property
    def epochs(self) -> int:
        return int(self.train["epochs"])

    @property
    def device(self) -> str:
        """The spec's device string; empty for a ``gpus: N`` job (its set is the daemon's choice)."""
        return self.train.get("device", "")

    @property
    def gpu_indices(self) -> list[int]:
        """NVML indices the spec names; empty for CPU/MPS jobs and ``gpus: N`` jobs."""
        return [int(d) for d in self.device.split(",") if d.strip().isdigit()]

    @property
    def gpu_count(self) -> int:
        """How many GPUs the job trains on (0: CPU)."""
        return self.gpus or len(self.gpu_indices)


_DEVICE_PROBLEM = "'device' must be cpu, a GPU index or a list of them"


def normalize_device(device: Any) -> str:
    """One spelling per device set: ``0``, ``[0, 1]`` and ``"0, 1"`` -> ``"0"``, ``"0,1"``.

    The result is never empty and normalises to itself: it is stored and parsed
    again on every read, so ``[]`` or ``","`` must be refused here, at submit.
    """
    parts = _device_parts(device)
    if not parts:
        raise ValueError(_DEVICE_PROBLEM + " (none given)")
    return ",".join(parts)


def _device_parts(device: Any) -> list[str]:
    if isinstance(device, bool):
        raise ValueError(_DEVICE_PROBLEM)
    if isinstance(device, int):
        return [str(device)]
    if isinstance(device, (list, tuple)):
        parts = []
        for item in device:
            if isinstance(item, (list, tuple)):
                raise ValueError(_DEVICE_PROBLEM + " (a list inside the list)")
            parts += _device_parts(item)
        return parts
    if isinstance(device, str):
        return [p.strip() for p in device.split(",") if p.strip()]
    raise ValueError(_DEVICE_PROBLEM)


@functools.lru_cache(maxsize=1)
def ultralytics_train_keys() -> frozenset[str]:
    """Argument names from Ultralytics' own cfg/default.yaml, read without importing it.

    Empty when ultralytics is not installed: then train keys are passed through
    unchecked and Ultralytics reports a bad one in the child.
    """
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    default = Path(list(spec.submodule_search_locations)[0]) / "cfg" / "default.yaml"
    try:
        data = yaml.safe_load(default.read_text())
    except OSError:
        return frozenset()
    return frozenset(data) if isinstance(data, dict) else frozenset()


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "string_pattern_mismatch" and field == "name":
            msg = "must match [A-Za-z0-9][A-Za-z0-9._-]{0,63} (letters, digits, '.', '_', '-'; no '/')"
        problems.append(f"{field}: {msg}")
    return problems


def parse_spec(data: Any, source: str = "<spec>") -> JobSpec:
    """Validate an already-loaded mapping."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _format_errors(err)) from None


def parse_spec_text(text: str, source: str = "<spec>") -> JobSpec:
    """Parse YAML text (safe loader only, bounded in size once aliases are expanded) and validate it."""
    try:
        data = load_bounded_yaml(text, source)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    return parse_spec(data, source)


# libyaml's parser where PyYAML was built with it: the same safe constructor, parsing 10x faster
# (the daemon parses every stored spec once at start: 10,000 jobs took 30 s in pure Python).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_bounded_yaml(text: str, source: str = "<spec>") -> Any:
    """``yaml.safe_load``, but a document that expands to more than ``MAX_YAML_NODES`` nodes
    (aliases counted at every use) or nests deeper than ``MAX_YAML_DEPTH`` is refused before
    anything is built from it."""
    loader = _SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpecError(source, [f"(top level): nested too deeply (more than {MAX_YAML_DEPTH} levels)"]) from None
        except yaml.YAMLError as err:  # libyaml stops deep nesting itself
            if "nesting depth" not in str(getattr(err, "problem", "") or ""):
                raise
            raise SpecError(source, [f"(top level): nested too deeply (more than {MAX_YAML_DEPTH} levels)"]) from None
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Walk the node graph as the constructor and pydantic would, alias by alias, up to the budget."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        where = f"line {node.start_mark.line + 1}"
        if seen > MAX_YAML_NODES:
            raise SpecError(source, [f"{where}: the document expands to more than {MAX_YAML_NODES} values "
                                     "(YAML aliases); refused"])
        if depth > MAX_YAML_DEPTH:
            raise SpecError(source, [f"{where}: nested deeper than {MAX_YAML_DEPTH} levels; refused"])
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def load_spec(path: Path) -> JobSpec:
    """Read and validate a job file, refusing oversized files."""
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"(file): {size} bytes is over the {MAX_SPEC_BYTES} byte limit"])
    return parse_spec_text(path.read_text(encoding="utf-8", errors="replace"), str(path))


def spec_to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
