"""The benchmark runner's command line (no timing: performance lives in the recorded runs)."""
from benchmarks import run


def test_cases_filter_that_matches_nothing_is_an_error(capsys):
    assert run.main(["--ops", "soft_aggregate", "--cases", "no-such-case", "--no-record"]) == 2
    assert "no case name contains any of ['no-such-case']" in capsys.readouterr().err
