"""`python -m yoso.models pull [NAME...]` and `python -m yoso.models list`."""

from yoso.cli import models

if __name__ == "__main__":
    models(prog_name="python -m yoso.models")
