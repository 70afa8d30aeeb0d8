"""The arguments of each control request, typed and checked in one place.

The wire stays the JSON object the CLI sends (``{"cmd": "stop", "args": {"name": "coco"}}``);
``from_args`` turns a command's ``args`` into its frozen request (``StopRequest(name="coco")``) on
the connection's thread, before anything reaches the daemon's loop. A missing, wrongly typed or
out-of-range value is ``RequestError(USAGE)`` naming the argument (``'lines': Input should be
greater than or equal to 0``). Types are strict: ``true`` is not the integer 1 and ``"false"`` is
not a boolean (``{"purge": "false"}`` must not purge). Keys a command does not take are ignored,
as from an older or newer client.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional, Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from supervisor.child.drill import KINDS as DRILL_KINDS
from supervisor.control.protocol import ErrorCode, RequestError, one_line
from supervisor.jobs.spec import MAX_SPEC_BYTES, NAME_PATTERN

MAX_NAMES = 1000              # distinct job names in one request
MAX_EDIT_VALUES = 32          # KEY=VALUE pairs in one edit
MAX_EDIT_KEY = 100            # characters of an edit's key (a train argument's name)
MAX_EDIT_VALUE_BYTES = 4096   # one value, as JSON (a path is at most 4096 bytes)
MAX_SOURCE = 200              # characters of a submit's source label


def _job_name(value: Any) -> Any:
    if not isinstance(value, str) or not re.match(NAME_PATTERN, value):
        raise ValueError(f"not a job name: {_shown(value)}")
    return value


JobName = Annotated[str, BeforeValidator(_job_name)]


def _shown(value: Any) -> str:
    """A value as an error message quotes it: a megabyte of name must not make the answer a megabyte."""
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


class ControlRequest(BaseModel):
    """One command's arguments; ``from_args`` is the only way in from the wire."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ControlRequest":
        try:
            return cls.model_validate(args)
        except ValidationError as err:
            raise RequestError(ErrorCode.USAGE, _problem(err)) from None


def _problem(err: ValidationError) -> str:
    """The first problem, naming its argument: 10,000 bad names make one line, not 10,000."""
    first = err.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"])
    if first["type"] == "missing":
        return f"'{where}' is required"
    return f"'{where}': {first['msg'].removeprefix('Value error, ')}"


# -- the requests, by command ----------------------------------------------------------------
class NoArguments(ControlRequest):
    """gpus, web-login."""


class JobRequest(ControlRequest):
    """history, results, stop, start, restart: one job, by name."""

    name: JobName


class MaybeJobRequest(ControlRequest):
    """notify-test: the daemon's targets and, given a name, that job's."""

    name: Optional[JobName] = None


class StatusRequest(ControlRequest):
    """Every job, or the named ones: each distinct name once (a name given 100,000 times is looked
    up once), at most ``MAX_NAMES`` of them."""

    names: tuple[JobName, ...] = ()

    @field_validator("names", mode="before")
    @classmethod
    def _distinct(cls, names: Any) -> Any:
        if names is None:
            return ()
        if not isinstance(names, list):
            raise ValueError("must be a list of job names")
        distinct = tuple(dict.fromkeys(names)) if all(isinstance(n, str) for n in names) else tuple(names)
        if len(distinct) > MAX_NAMES:
            raise ValueError(f"{len(distinct)} names in one request; at most {MAX_NAMES} "
                             "(leave the names out to list every job)")
        return distinct


class TailRequest(JobRequest):
    """The last ``lines`` lines of the job's log."""

    lines: int = Field(10, ge=0)


class LogRequest(JobRequest):
    """The log after byte ``offset`` (``tail -f``)."""

    offset: int = Field(0, ge=0)


class EventsRequest(ControlRequest):
    """Events of every job (or one): those after ``after_id``, else the ``last`` N."""

    name: Optional[JobName] = None
    after_id: Optional[int] = Field(None, ge=0)
    last: Optional[int] = Field(None, ge=0)


class SubmitRequest(ControlRequest):
    """A job file's text, and where it came from (a label for messages and the job's events)."""

    text: str
    source: str = "socket"

    @field_validator("source")
    @classmethod
    def _one_short_line(cls, source: str) -> str:
        return one_line((source or "socket")[:MAX_SOURCE])

    def model_post_init(self, _context: Any) -> None:
        # Not a usage error: the job file is too big, as it would be from the inbox.
        if len(self.text.encode("utf-8")) > MAX_SPEC_BYTES:
            raise RequestError(ErrorCode.INVALID, f"{self.source}: (file): over the {MAX_SPEC_BYTES} byte limit")


class DrillRequest(JobRequest):
    """One real fault injected into the job's training."""

    kind: Literal[DRILL_KINDS]


class EditRequest(JobRequest):
    """New train arguments (KEY=VALUE) for a job with no process; ``force`` past the warnings."""

    values: dict[str, Any]
    force: bool = False

    @field_validator("values")
    @classmethod
    def _few_small_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        if not values:
            raise ValueError("edit needs KEY=VALUE arguments")
        if len(values) > MAX_EDIT_VALUES:
            raise ValueError(f"{len(values)} values in one edit; at most {MAX_EDIT_VALUES}")
        for key, value in values.items():
            size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
            if len(key) > MAX_EDIT_KEY or size > MAX_EDIT_VALUE_BYTES:
                raise ValueError(f"{key[:MAX_EDIT_KEY]!r}: a value of {size} bytes; at most "
                                 f"{MAX_EDIT_VALUE_BYTES} bytes a value and {MAX_EDIT_KEY} characters a key")
        return values


class ExtendRequest(JobRequest):
    """Train a finished job further, to ``epochs`` in all."""

    epochs: int = Field(ge=1)


class RemoveRequest(JobRequest):
    """Forget a job with no process; ``purge`` deletes its folder too."""

    purge: bool = False


class UsageRequest(ControlRequest):
    """GPU-hours over the last ``since_s`` seconds (30 days by default)."""

    since_s: float = Field(30 * 86400.0, gt=0, lt=1e10)
