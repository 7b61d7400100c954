"""``python -m csaf_events.matssocket``: run a MatsSocket node (see `csaf_events.matssocket.cli`)."""

import sys

from csaf_events.matssocket.cli import main

sys.exit(main())
