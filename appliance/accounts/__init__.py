"""Accounts: the panel's users, their roles and the rules their names and passwords obey.

Imports nothing: the panel imports ``appliance.accounts.rules`` and must not load the store.
"""
