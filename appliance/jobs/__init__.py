"""Jobs: the concurrent runner, the registry of job kinds, the kinds themselves, states.

Imports nothing: the panel imports ``appliance.jobs.states`` and must not load the runner.
"""
