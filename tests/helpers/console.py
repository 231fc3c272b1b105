"""What must not reach a successful `make demo` console: the patterns its test checks
output against (tests/e2e/test_demo.py) and checks themselves against (tests/unit/test_demo.py)."""

from __future__ import annotations

import re

NOISE = [
    (r"Traceback \(most recent call last\)", "a traceback"),
    (r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [EWF] \d+ \d+\]", "a C++ log line from Ray (E/W/F)"),
    (r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(WARNING|ERROR|CRITICAL)\b", "a Python log warning"),
    (r"^(WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d", "a Ray Serve log warning"),
    (r"^(INFO|DEBUG) \d{4}-\d\d-\d\d|\tINFO \w+\.py:\d+ --", "a Ray info log line"),
    (r"\((raylet|pid=\d+|\w+ pid=\d+)\)", "a line forwarded from a Ray process"),
    (r"will be retried|core_worker\.cc|Token authentication is", "Ray's shutdown/actor/auth noise"),
    (r"\b\w*(Warning|Error): ", "a Python warning or error"),
    (
        r"Trial status:|Configuration for experiment|View detailed results here",
        "Ray Tune's own reporter",
    ),
]


def noise(output: str) -> list[str]:
    found = []
    for line in output.splitlines():
        for pattern, what in NOISE:
            if re.search(pattern, line):
                found.append(f"{what}: {line[:200]}")
    return found
