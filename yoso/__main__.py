"""`python -m yoso ...`: the `yoso` command, where its script is not on PATH (e.g. `python -m yoso models pull`)."""

from yoso.cli import main

if __name__ == "__main__":
    main(prog_name="python -m yoso")
