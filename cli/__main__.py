"""``python -m cli ...``: the same as the ``barge`` command."""

import sys

from cli.main import main

sys.exit(main())
