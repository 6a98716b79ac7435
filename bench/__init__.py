"""`python -m bench`: the raw model's limits and the server against them, in one run on one machine.

A tool of the repository, not of the package: neither the wheel nor the image carries it.
"""
