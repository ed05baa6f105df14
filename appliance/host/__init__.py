"""The host: hardware inventory read from a root directory, profiles, live load, metrics."""
