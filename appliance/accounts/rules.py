"""What makes an account acceptable, shared by the daemon that enforces it and the panel's forms."""

import re

ROLES = ("admin", "auditor")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
# One limit for every place a user name is typed (creation, login, the API): a name that can
# be made can be logged in with, and a longer one is refused the same way everywhere.
MAX_USERNAME = 32
USERNAME = re.compile(rf"[a-z_][a-z0-9_.-]{{0,{MAX_USERNAME - 1}}}")  # matched whole (fullmatch)
USERNAME_RULE = (f"1-{MAX_USERNAME} characters: lower-case letters, digits, '_', '.', '-', "
                 "starting with a letter or '_'")
