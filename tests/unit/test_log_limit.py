"""The orchestrator's warning about a stranded run comes once per run and version a minute, not
once per input: a run whose version is loaded nowhere refuses every input it gets."""

from __future__ import annotations

from relayflow.orchestration.log_limit import LogLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_warning_per_key_per_period_counting_those_held_back() -> None:
    """The second line of a minute says how many inputs it stood for, so nothing is hidden."""
    clock = Clock()
    limit = LogLimit(60.0, clock=clock)
    assert limit.admit(("wf_a", "1")) == 0
    assert limit.admit(("wf_a", "1")) is None
    assert limit.admit(("wf_a", "1")) is None
    assert limit.admit(("wf_b", "1")) == 0, "another run is another warning"
    assert limit.admit(("wf_a", "2")) == 0, "another version of the run too"
    clock.now += 59.9
    assert limit.admit(("wf_a", "1")) is None
    clock.now += 0.1
    assert limit.admit(("wf_a", "1")) == 3
    assert limit.admit(("wf_a", "1")) is None


def test_keys_whose_period_is_over_are_forgotten_past_the_bound() -> None:
    """Thousands of stranded runs over a day must not grow the process without end."""
    clock = Clock()
    limit = LogLimit(60.0, clock=clock, max_keys=3)
    for index in range(3):
        assert limit.admit(index) == 0
    clock.now += 61
    assert limit.admit("new") == 0
    assert len(limit._windows) == 1  # the bound is what this test is about
