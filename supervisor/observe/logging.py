"""structlog setup: JSON lines when not on a TTY (journald), readable on a TTY."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    if stream.isatty():
        tail = [structlog.dev.ConsoleRenderer(colors=True)]  # renders exc_info itself
    else:
        # Without format_exc_info, log.exception() in JSON lost its traceback (the "exception" key).
        tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


LEVELS = ("debug", "info", "warning", "error", "critical")


def level_number(level: str) -> int:
    """``info`` -> 20; ValueError naming the choices for anything else (never a half-applied level)."""
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ValueError(f"log_level: {level!r} is not one of {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


def get_logger(**bound):
    return structlog.get_logger("yolo-supervisor").bind(**bound)
