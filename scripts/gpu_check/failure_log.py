"""pytest plugin of the GPU check's tests stage (`-p gpu_check.failure_log --failure-log PATH`).

Appends each failed test's id, phase and traceback to PATH as soon as it is reported (under
pytest-xdist, as the controller receives it), and each finished test's id to PATH.done, so
that a stage killed by its time box still says what failed and what ran: JUnit XML is
written only at the end of a session (the first H200 run lost its failures that way).
"""
from __future__ import annotations

from pathlib import Path

_path: str | None = None


def pytest_addoption(parser):
    parser.addoption("--failure-log", default=None, help="append failed tests' tracebacks here as they happen")


def pytest_configure(config):
    global _path
    _path = config.getoption("--failure-log")
    if _path is not None:
        Path(_path).parent.mkdir(parents=True, exist_ok=True)


def pytest_runtest_logreport(report):
    if _path is None:
        return
    if report.failed:
        with open(_path, "a") as f:
            f.write(f"=== FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
    if report.when == "teardown":
        with open(f"{_path}.done", "a") as f:
            f.write(f"{report.nodeid}\n")
