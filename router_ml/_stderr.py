"""One line on stderr per message, written whole."""

from __future__ import annotations

import sys

__all__ = ["say"]


def say(message: str) -> None:
    """``router-ml: <message>`` and its newline in one write, flushed: ``print`` writes the text and the
    newline separately, so two serve workers saying something at once could share one line (a pipe keeps
    a single write of up to 4 KiB whole)."""
    sys.stderr.write(f"router-ml: {message}\n")
    sys.stderr.flush()
