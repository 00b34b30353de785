"""``python -m jobtrace``: the same as the ``jobtrace`` command."""

from jobtrace.cli import main

raise SystemExit(main())
