"""`python -m vsearch.cli`, the same command as `vsearch` and `python -m vsearch`."""

import sys

from vsearch.cli import main

sys.exit(main())
