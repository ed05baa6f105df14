"""The states of a job, shared by the daemon's runner and the panel that shows them."""

# awaiting_approval: created by a peer's job.create from a peer an admin has not approved for
# automatic acceptance; an admin approves (-> queued) or cancels it
STATES = ("awaiting_approval", "queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = ("done", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
