"""The demo: a local cluster of the three services as real processes, and a full job on it.

May import every other layer; nothing imports it except the CLI and the tests.
"""
