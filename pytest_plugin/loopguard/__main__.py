"""``python -m loopguard``: see :mod:`loopguard._cli`."""

from ._cli import main

raise SystemExit(main())
