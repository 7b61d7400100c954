"""`python -m bench`: the MatsSocket lifecycle benchmark (`bench.lifecycle`)."""

import sys

from bench.lifecycle import main

sys.exit(main())
