"""The states of a job, shared by the daemon's runner and the panel that shows them."""

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = ("done", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
