"""`python -m yoso.bench`: the raw model's limits and the server against them, in one run on one machine."""
