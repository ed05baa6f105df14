"""``python -m appliance.cli``: the same as the ``pec-appliance`` script."""

import sys

from appliance.cli import main

sys.exit(main())
