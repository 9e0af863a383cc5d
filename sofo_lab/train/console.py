"""What sofo-run prints: its own lines through ``logging`` (so the job log holds them too), warnings
as one line each.

Under Hydra, ``conf/hydra/job_logging/sofo.yaml`` sends the ``sofo_lab`` log lines to stdout and
warnings to stderr as plain text, and both to ``<run dir>/sofo.log`` with a timestamp. Called as a library (no logging
configured), ``emit`` prints the same lines.
"""
from __future__ import annotations

import logging
import sys
import warnings

log = logging.getLogger("sofo_lab")


class BelowWarning(logging.Filter):
    """Passes records below WARNING: the stdout handler's filter (warnings go to stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: <message> (<Category>)``: no file name, line number or source line."""
    del filename, lineno, line
    text = " ".join(str(message).split())
    return f"warning: {text} ({category.__name__})\n"


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    text = one_line_warning(message, category, filename, lineno, line)
    if file is None and logging.getLogger().handlers:
        logging.getLogger("py.warnings").warning(text.rstrip("\n"))
        return
    (file or sys.stderr).write(text)


def install() -> None:
    """One-line warnings; under a configured logging (Hydra's job logging) they go to the job log too."""
    warnings.formatwarning = one_line_warning
    warnings.showwarning = _show


def emit(lines: str) -> None:
    """Print ``lines`` to stdout, through the ``sofo_lab`` logger when logging is configured."""
    if log.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
        for line in lines.splitlines():
            log.info(line)
    else:
        print(lines, flush=True)
