"""The pure core: membership state, attribute formats, diff, data points, identity, policies.

Nothing here does I/O; see README.md in this folder.
"""
