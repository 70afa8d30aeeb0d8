"""apprise, imported once and kept quiet: its loggers (and urllib3's) never print URLs.

URLs are secrets; apprise's own log lines quote them. They go to a per-thread capture
(``captured_warnings``) that the sender reads and redacts, and nowhere else.
"""

from __future__ import annotations

import logging
import threading

_capture = threading.local()


class _CaptureHandler(logging.Handler):
    """apprise's own log lines (which quote URLs) go here and nowhere else: kept per sending
    thread so a failure can be reported (redacted), dropped otherwise."""

    def emit(self, record: logging.LogRecord) -> None:
        said = getattr(_capture, "said", None)
        if said is not None:
            try:
                said.append(record.getMessage())
            except Exception:
                pass


class captured_warnings:
    """`with captured_warnings() as said:` collects what apprise logs on this thread meanwhile."""

    def __enter__(self) -> list[str]:
        _capture.said = []
        return _capture.said

    def __exit__(self, *exc) -> None:
        _capture.said = None


_APPRISE = None
_APPRISE_LOCK = threading.Lock()


def load_apprise():
    """Import apprise once, with its loggers (and urllib3's) kept from printing URLs."""
    global _APPRISE
    with _APPRISE_LOCK:
        if _APPRISE is None:
            handler = _CaptureHandler(logging.WARNING)
            for name in ("apprise", "urllib3", "requests"):
                lg = logging.getLogger(name)
                lg.handlers[:] = [handler]
                lg.propagate = False
                lg.setLevel(logging.WARNING)
            import apprise

            _APPRISE = apprise
        return _APPRISE
