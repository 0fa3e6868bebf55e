"""``python -m medigan_iso`` is the ``medigan-iso`` command."""

from medigan_iso.cli import main

raise SystemExit(main())
