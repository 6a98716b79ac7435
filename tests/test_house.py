"""The house rules that keep the code readable in minutes: small modules, and tests that wait on events."""

from __future__ import annotations

import re

from tests.support import ROOT

MAX_MODULE_LINES = 300
MAX_SLEEPS_IN_TESTS = 8


def test_no_module_of_the_server_is_over_300_lines():
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in (ROOT / "yoso").rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_tests_sleep_rarely_and_say_why_each_time():
    """A sleep waits on the clock, not on what it means to wait for: each one left must say why no event will do
    (a comment on its line or the line above)."""
    sleeps = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if re.search(r"\btime\.sleep\(", line) and not line.lstrip().startswith("#"):
                explained = "#" in line or lines[n - 1].lstrip().startswith("#")
                sleeps.append((f"{path.name}:{n + 1}", explained))
    assert len(sleeps) <= MAX_SLEEPS_IN_TESTS, sleeps
    assert [where for where, explained in sleeps if not explained] == []
