"""The node daemon, hardware inventory, profiles, jobs, audit ledger, CLI and admin panel."""

__version__ = "0.1.0"
