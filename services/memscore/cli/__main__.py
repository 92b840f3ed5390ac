"""`python -m memscore.cli`: the same as the `memscore` console script."""

import sys

from memscore.cli import main

sys.exit(main())
