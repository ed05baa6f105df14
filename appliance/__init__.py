"""The node daemon, hardware inventory, profiles, jobs, audit ledger, CLI and admin panel."""
