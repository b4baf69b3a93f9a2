"""The CLI's two streams: results on stdout, progress, notes and errors on stderr.

Rich drops colour and styles by itself when a stream is not a terminal; `say` also keeps a
line from being wrapped at the 80 columns Rich assumes for a pipe.
"""

from __future__ import annotations

from rich.console import Console

out = Console()
err = Console(stderr=True)


def say(console: Console, text: str) -> None:
    """One line of plain text: no markup, no highlighting, never wrapped by Rich."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
