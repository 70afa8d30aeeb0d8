"""config.yaml's ``web:`` section (off when absent)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supervisor.address import parse_address


class WebSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: Optional[str] = Field(None, description="host:port of the web view on TCP (a port alone: "
                                                    "127.0.0.1); unset: the Unix socket only")
    socket: Optional[str] = Field(None, description="the web view's Unix socket (default: web.sock beside "
                                                    "the control socket); for `ssh -L 8787:PATH host`")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="how long a browser login lasts")

    @field_validator("listen", mode="before")
    @classmethod
    def _address(cls, value):
        """``8787`` (YAML reads it as a number), ``:8787``, ``host:8787`` or ``[::1]:8787``."""
        if value is None:
            return None
        try:
            parse_address(str(value))
        except ValueError as err:
            raise ValueError(str(err).replace("metrics_address: ", "")) from None
        return str(value)
