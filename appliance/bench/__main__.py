import sys

from appliance.bench import main

sys.exit(main())
