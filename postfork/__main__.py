"""``python -m postfork``: the ``postfork`` command."""

import sys

from ._cli import main

sys.exit(main())
