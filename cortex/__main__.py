"""``python -m cortex``: same as ``chimera cortex``."""

import sys

from cortex.launcher import main

sys.exit(main())
