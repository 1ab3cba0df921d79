"""``python -m handserve_cli``: the ``handserve`` command without the console script."""

import sys

from handserve_cli import main

sys.exit(main())
