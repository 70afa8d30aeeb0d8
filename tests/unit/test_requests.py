"""Typed control requests (supervisor/control/requests.py): each command's arguments parse in one
place, and a bad one is refused as a usage error naming it, before the daemon's loop sees it."""

from __future__ import annotations

import dataclasses
import time

import pydantic
import pytest

from supervisor.control import handlers
from supervisor.control.peer import Peer
from supervisor.control.protocol import ErrorCode, Request, RequestError
from supervisor.control.requests import (MAX_EDIT_VALUE_BYTES, MAX_EDIT_VALUES, MAX_NAMES, EditRequest,
                                         StatusRequest, TailRequest)
from supervisor.jobs.spec import MAX_SPEC_BYTES
from tests.conftest import in_process_daemon

ROOT = Peer(pid=1, uid=0, gid=0)

# What the CLI and the web view send for each command (supervisor/control/cli.py, supervisor/web/):
# the wire is unchanged, so each must parse to the values the handler reads.
GOOD = [
    ("status", {"names": []}, {"names": ()}),
    ("status", {"names": ["a", "b", "a"]}, {"names": ("a", "b")}),
    ("status", {}, {"names": ()}),
    ("gpus", {}, {}),
    ("history", {"name": "coco"}, {"name": "coco"}),
    ("results", {"name": "coco"}, {"name": "coco"}),
    ("tail", {"name": "coco", "lines": 20}, {"name": "coco", "lines": 20}),
    ("tail", {"name": "coco"}, {"lines": 10}),
    ("log", {"name": "coco", "offset": 4096}, {"offset": 4096}),
    ("log", {"name": "coco"}, {"offset": 0}),
    ("events", {"after_id": 0}, {"name": None, "after_id": 0, "last": None}),
    ("events", {"name": "coco", "last": 5}, {"name": "coco", "after_id": None, "last": 5}),
    ("notify-test", {}, {"name": None}),
    ("notify-test", {"name": "coco"}, {"name": "coco"}),
    ("submit", {"text": "name: coco\n", "source": "coco.yaml"}, {"text": "name: coco\n", "source": "coco.yaml"}),
    ("submit", {"text": "name: coco\n"}, {"source": "socket"}),
    ("submit", {"text": "x", "source": "a\nb" + "c" * 300}, {"source": "a\\nb" + "c" * 197}),  # one line, 200 characters
    ("stop", {"name": "coco"}, {"name": "coco"}),
    ("start", {"name": "coco"}, {"name": "coco"}),
    ("restart", {"name": "coco"}, {"name": "coco"}),
    ("drill", {"name": "coco", "kind": "oom"}, {"kind": "oom"}),
    ("edit", {"name": "coco", "values": {"lr0": 0.01, "batch": 16}, "force": False},
     {"values": {"lr0": 0.01, "batch": 16}, "force": False}),
    ("edit", {"name": "coco", "values": {"lr0": 0.01}}, {"force": False}),
    ("extend", {"name": "coco", "epochs": 50}, {"epochs": 50}),
    ("remove", {"name": "coco", "purge": True}, {"purge": True}),
    ("remove", {"name": "coco"}, {"purge": False}),
    ("usage", {"since_s": 86400}, {"since_s": 86400.0}),
    ("usage", {"since_s": 0.5}, {"since_s": 0.5}),
    ("usage", {}, {"since_s": 30 * 86400.0}),
    ("web-login", {}, {}),
    ("stop", {"name": "coco", "from_a_newer_client": 1}, {"name": "coco"}),  # unknown keys are ignored
]


def parse(cmd: str, args: dict):
    return handlers.HANDLERS[cmd].request.from_args(args)


@pytest.mark.parametrize("cmd,args,expected", GOOD, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(GOOD)])
def test_a_good_request_parses_to_what_the_handler_reads(cmd, args, expected):
    request = parse(cmd, args)
    assert {key: getattr(request, key) for key in expected} == expected


def test_every_command_has_a_request_and_a_good_example():
    assert {cmd for cmd, _, _ in GOOD} == set(handlers.HANDLERS)


# (command, args, the argument the message must name, what else it must say)
BAD = [
    ("status", {"names": "coco"}, "names", "list"),
    ("status", {"names": ["coco", "../etc"]}, "names[1]", "not a job name: '../etc'"),
    ("status", {"names": [5]}, "names[0]", "not a job name: 5"),
    ("status", {"names": [f"j{i}" for i in range(MAX_NAMES + 1)]}, "names", f"at most {MAX_NAMES}"),
    ("history", {}, "name", "required"),
    ("history", {"name": "../etc"}, "name", "not a job name"),
    ("results", {"name": ""}, "name", "not a job name"),
    ("tail", {"name": "coco", "lines": -1}, "lines", "greater than or equal to 0"),
    ("tail", {"name": "coco", "lines": "10"}, "lines", "integer"),
    ("tail", {"name": "coco", "lines": True}, "lines", "integer"),  # a bool is not a count
    ("tail", {"name": "coco", "lines": 1.5}, "lines", "integer"),
    ("log", {"name": "coco", "offset": -5}, "offset", "greater than or equal to 0"),
    ("log", {"name": "coco", "offset": None}, "offset", "integer"),
    ("log", {"name": 7, "offset": 0}, "name", "not a job name"),
    ("events", {"after_id": -1}, "after_id", "greater than or equal to 0"),
    ("events", {"last": "5"}, "last", "integer"),
    ("events", {"name": "a/b"}, "name", "not a job name"),
    ("notify-test", {"name": "a b"}, "name", "not a job name"),
    ("submit", {}, "text", "required"),
    ("submit", {"text": ["name: coco"]}, "text", "string"),
    ("submit", {"text": "x", "source": 5}, "source", "string"),
    ("stop", {"name": "x" * 65}, "name", "not a job name"),
    ("stop", {"name": None}, "name", "not a job name"),
    ("start", {"name": "-coco"}, "name", "not a job name"),
    ("restart", {"name": ".."}, "name", "not a job name"),
    ("drill", {"name": "coco"}, "kind", "required"),
    ("drill", {"name": "coco", "kind": "meteor"}, "kind", "'oom'"),
    ("edit", {"name": "coco"}, "values", "required"),
    ("edit", {"name": "coco", "values": {}}, "values", "KEY=VALUE"),
    ("edit", {"name": "coco", "values": [["lr0", 1]]}, "values", "dictionary"),
    ("edit", {"name": "coco", "values": {f"k{i}": 1 for i in range(MAX_EDIT_VALUES + 1)}}, "values",
     f"{MAX_EDIT_VALUES + 1} values in one edit; at most {MAX_EDIT_VALUES}"),
    ("edit", {"name": "coco", "values": {"data": "x" * MAX_EDIT_VALUE_BYTES}}, "values",
     f"at most {MAX_EDIT_VALUE_BYTES} bytes a value"),
    ("edit", {"name": "coco", "values": {"k" * 101: 1}}, "values", "100 characters a key"),
    ("edit", {"name": "coco", "values": {"lr0": 1}, "force": "yes"}, "force", "boolean"),
    ("extend", {"name": "coco"}, "epochs", "required"),
    ("extend", {"name": "coco", "epochs": 0}, "epochs", "greater than or equal to 1"),
    ("extend", {"name": "coco", "epochs": 5.0}, "epochs", "integer"),
    ("remove", {"name": "coco", "purge": "false"}, "purge", "boolean"),  # a truthy string must not purge
    ("remove", {"name": "coco", "purge": 1}, "purge", "boolean"),
    ("usage", {"since_s": 0}, "since_s", "greater than 0"),
    ("usage", {"since_s": 1e10}, "since_s", "less than"),
    ("usage", {"since_s": "1d"}, "since_s", "number"),
    ("usage", {"since_s": False}, "since_s", "number"),
]


@pytest.mark.parametrize("cmd,args,argument,says", BAD, ids=[f"{c}-{a}-{i}" for i, (c, _, a, _) in enumerate(BAD)])
def test_a_bad_argument_is_a_usage_error_naming_it(cmd, args, argument, says):
    with pytest.raises(RequestError) as err:
        parse(cmd, args)
    assert err.value.code == ErrorCode.USAGE
    assert str(err.value).startswith(f"'{argument}'") and says in str(err.value), str(err.value)


def test_every_command_has_a_bad_example():
    commands_with_arguments = {cmd for cmd, h in handlers.HANDLERS.items() if h.request.model_fields}
    assert {cmd for cmd, _, _, _ in BAD} == commands_with_arguments


def test_a_job_file_over_the_size_limit_is_invalid_as_from_the_inbox_not_a_usage_error():
    with pytest.raises(RequestError) as err:
        parse("submit", {"text": "#" * (MAX_SPEC_BYTES + 1), "source": "big.yaml"})
    assert err.value.code == ErrorCode.INVALID
    assert str(err.value) == f"big.yaml: (file): over the {MAX_SPEC_BYTES} byte limit"


def test_a_huge_bad_value_is_quoted_short():
    with pytest.raises(RequestError) as err:
        parse("stop", {"name": "x" * 500_000})
    assert len(str(err.value)) < 200


def test_a_name_listed_100000_times_is_one_name_and_many_bad_ones_make_one_line():
    assert StatusRequest.from_args({"names": ["coco"] * 100_000}).names == ("coco",)
    with pytest.raises(RequestError) as err:
        StatusRequest.from_args({"names": ["../x"] * MAX_NAMES})
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_requests_are_frozen():
    request = EditRequest.from_args({"name": "coco", "values": {"lr0": 0.1}})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        request.name = "other"  # type: ignore[misc]


# -- dispatch parses before the loop --------------------------------------------------------
@pytest.fixture
def daemon(tmp_path):
    """A real Daemon whose loop is not running: whatever reaches the loop waits and times out."""
    yield from in_process_daemon(tmp_path)


@pytest.mark.parametrize("cmd,args", [("tail", {"name": "coco", "lines": -1}), ("stop", {"name": "../etc"}),
                                      ("edit", {"name": "coco", "values": {}}), ("submit", {"text": 5})])
def test_dispatch_refuses_a_bad_argument_without_the_loop(daemon, cmd, args):
    began = time.monotonic()
    with pytest.raises(RequestError) as err:
        handlers.dispatch(daemon, Request(cmd, args), ROOT, timeout=5.0)
    assert err.value.code == ErrorCode.USAGE  # not INTERNAL: the loop (not running here) was never asked
    assert time.monotonic() - began < 2.0


def test_dispatch_hands_the_handler_its_typed_request(daemon, monkeypatch):
    seen = []
    tail = handlers.HANDLERS["tail"]
    monkeypatch.setitem(handlers.HANDLERS, "tail", dataclasses.replace(tail, fn=lambda d, r, p: seen.append(r) or "ok"))
    monkeypatch.setattr(daemon, "call", lambda fn, timeout: fn())  # the loop's turn, run here
    assert handlers.dispatch(daemon, Request("tail", {"name": "coco", "lines": 3}), ROOT) == "ok"
    assert seen == [TailRequest(name="coco", lines=3)]
