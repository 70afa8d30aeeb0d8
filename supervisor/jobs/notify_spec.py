"""The ``notify:`` schemas: a job file's extra targets and config.yaml's settings.

They sit with the job model (``jobs/spec.py`` holds a ``JobNotify``) so that validating a spec
needs nothing from observe/; the sending half is ``observe/notify.py``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from supervisor.apprise_quiet import load_apprise

NotifyEvent = Literal["failed", "held", "completed", "restarted", "stalled"]
DEFAULT_ON: tuple[str, ...] = ("failed", "held", "completed")


# -- validation ------------------------------------------------------------------------
def url_problem(url: Any) -> Optional[str]:
    """Why ``url`` is not a usable apprise URL (None when it is); the message never quotes it."""
    if not isinstance(url, str) or "://" not in url:
        return "must be an apprise URL such as slack://..., ntfy://..., json://host/path"
    scheme = url.split("://", 1)[0].lower()
    if load_apprise().Apprise.instantiate(url) is None:
        return (f"not a notification URL apprise can use (scheme '{scheme}://'; "
                "see https://github.com/caronc/apprise/wiki)")
    return None


def _on_key(data: Any) -> Any:
    """YAML 1.1 (PyYAML) reads the key ``on`` as the boolean true: take it back as ``on``."""
    if isinstance(data, dict) and True in data:
        data = dict(data)
        data.setdefault("on", data.pop(True))
    return data


def _check_urls(urls: Sequence[str]) -> Sequence[str]:
    for i, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            raise ValueError(f"[{i}]: {problem}")
    return urls


class _Targets(BaseModel):
    """What both ``notify:`` sections share: ``urls`` checked one by one, and YAML's ``on`` key."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data):
        return _on_key(data)

    @field_validator("urls", check_fields=False)
    @classmethod
    def _urls(cls, urls):
        return _check_urls(urls)


class JobNotify(_Targets):
    """``notify:`` in a job file: more targets for this job, and which events it reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: tuple[str, ...] = Field((), description="apprise URLs, added to config.yaml's")
    on: Optional[tuple[NotifyEvent, ...]] = Field(None, description="events to report (default: config.yaml's)")


class RestartRate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(3, ge=1, description="restarted/stalled notifications per job ...")
    per_s: float = Field(3600.0, gt=0, description="... in this many seconds")


class NotifySettings(_Targets):
    """``notify:`` in config.yaml: the daemon's targets and how it sends."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(default_factory=list, description="apprise URLs told about every job")
    on: list[NotifyEvent] = Field(default_factory=lambda: list(DEFAULT_ON))
    restart_rate: RestartRate = RestartRate()
    timeout_s: float = Field(10.0, gt=0, le=300, description="connect and read timeout of one try")
    retries: int = Field(2, ge=0, le=10, description="tries after the first before giving up")
    queue_size: int = Field(100, ge=1, le=10000, description="messages waiting per target")
    allow_hosts: list[str] = Field(default_factory=list, description="loopback, link-local or private hosts a "
                                                                     "job file's targets may reach (names, "
                                                                     "addresses or networks: 10.1.2.0/24)")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, hosts):
        for host in hosts:
            allowed_entry(host)  # ValueError for garbage
        return hosts


def allowed_entry(entry: str):
    """A host name (str) or a network: ValueError for neither."""
    entry = str(entry).strip()
    if not entry:
        raise ValueError("an empty host")
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        if re.fullmatch(r"[A-Za-z0-9_.-]+", entry):
            return entry.lower()
        raise ValueError(f"{entry!r} is not a host name, an address or a network") from None
