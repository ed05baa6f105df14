"""What makes an account acceptable, shared by the daemon that enforces it and the panel's forms."""

import re

ROLES = ("admin", "auditor")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # matched whole (fullmatch)
