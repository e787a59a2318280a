"""``python -m train.data``: see :mod:`train.data.cli`."""

from train.data.cli import main

raise SystemExit(main())
