"""`python -m poller`: the same as the `poller` command."""

import sys

from poller.cli import main

sys.exit(main())
