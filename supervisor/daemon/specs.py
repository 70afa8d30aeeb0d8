"""Each job's parsed spec, parsed once per stored text (the daemon's parts all read it from here).

A job's spec is stored as YAML in its row; parsing it is the daemon's costliest per-job step, so it
is done once per text. One entry per job name, replaced when the job's text changes (an edit) and
dropped when the job is removed: a cache of a fixed size thrashed once the queue outgrew it (500
queued jobs parsed 500 YAML texts every tick: a whole core).
"""

from __future__ import annotations

from typing import Any, Union

from supervisor.jobs.spec import JobSpec, SpecError, parse_spec, parse_spec_text
from supervisor.store import JobRecord


class _SpecCache:
    """Each job's parsed spec (or why it does not validate)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Union[JobSpec, SpecError]]] = {}

    def parse(self, spec_yaml: str, name: str) -> JobSpec:
        hit = self._entries.get(name)
        if hit is None or hit[0] != spec_yaml:
            try:
                result: Union[JobSpec, SpecError] = parse_spec_text(spec_yaml, name)
            except SpecError as err:
                result = err
            hit = self._entries[name] = (spec_yaml, result)
        if isinstance(hit[1], SpecError):
            raise hit[1]
        return hit[1]

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)


_SPECS = _SpecCache()


def parsed(spec_yaml: str, name: str) -> JobSpec:
    """Specs are immutable once stored; parse each one once, not on every tick. ``SpecError`` when
    it no longer validates (e.g. an Ultralytics upgrade dropped an argument)."""
    return _SPECS.parse(spec_yaml, name)


def spec_of(job: JobRecord) -> JobSpec:
    """The spec of a row already read; ``SpecError`` likewise."""
    return _SPECS.parse(job.spec_yaml, job.name)


def with_specs(jobs: list[JobRecord]) -> list[tuple[JobRecord, JobSpec]]:
    """The jobs whose stored spec still validates, each with it."""
    found = []
    for job in jobs:
        try:
            found.append((job, spec_of(job)))
        except SpecError:
            continue
    return found


def forget(name: str) -> None:
    """The job is removed: its entry goes (a new job of that name parses its own text)."""
    _SPECS.forget(name)


def spec_from(data: dict[str, Any]) -> JobSpec:
    """A spec from its fields (an `extend` rewrites one)."""
    return parse_spec(data, data.get("name", "<spec>"))
