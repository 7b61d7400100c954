"""How a command-line program of this package runs: library errors as one line on stderr
and exit code 1. Below `csaf_events.ops.cli`, so that the modules that add subcommands to it
(``csaf serve``) can use it without importing the command that imports them."""

from __future__ import annotations

import sys
from collections.abc import Callable

from csaf_events.core.errors import CsafError

PROG = "csaf"


def run_main(fn: Callable[[], int], prog: str = PROG) -> int:
    """Run `fn`, turning library errors into one line on stderr and exit code 1."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CsafError, ValueError, TypeError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
