"""The state directory: config.toml, the SQLite store, atomic and TOML files.

A lower layer: it imports nothing else of appliance (not trust, not accounts).
"""
