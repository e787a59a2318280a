"""``python -m gateway`` is the ``aligngate`` command."""

from gateway.cli import main

raise SystemExit(main())
