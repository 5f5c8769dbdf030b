"""``python -m emolab.cli`` (how ``launch_server`` starts a server process)."""

import sys

from emolab.cli import main

sys.exit(main())
