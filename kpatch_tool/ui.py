"""The terminal: where the CLI modules print, one place for all of them.

Piped output (CI logs, `| less`) gets wide lines instead of rich's 80-column
folding. No markup and no emoji codes: names, summaries, paths and messages
are user data (`[/b]` crashed a table, `:x:` became an emoji); styles are
given as rich Text styles instead.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.text import Text

console = Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False,
                      width=None if sys.stderr.isatty() else 200)


def say(msg: str) -> None:
    err_console.print(Text.assemble(("kpt:", "dim"), " ", str(msg)))
