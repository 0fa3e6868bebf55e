"""Children the tests stop with Ctrl-C (SIGINT) must be able to receive it."""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """``preexec_fn`` for a child the test interrupts: SIGINT back to its default disposition.

    A test run started in the background by a non-interactive shell (``cmd &``, nohup, some CI runners)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child, so a
    Ctrl-C test would see the child run to its end. The child is what a user's terminal would start.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
