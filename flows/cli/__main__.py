"""`python -m flows.cli ...` is `lethe ...`."""

import sys

from flows.cli import main

sys.exit(main())
