"""`python -m wdys` is the `wdys` command."""

import sys

from wdys.cli import main

sys.exit(main())
