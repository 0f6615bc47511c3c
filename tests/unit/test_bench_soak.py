"""The soak's verdict: a series is flat when the drift its last half's slope predicts is within
the noise, so that a table that stopped growing reads as flat and one still growing does not."""

from __future__ import annotations

from bench.soak import verdict


def test_a_series_around_a_level_is_flat() -> None:
    """Samples that wobble around a level (vacuum, batches) are flat."""
    points = [(t * 15.0, 1000.0 + (25 if t % 2 else -25)) for t in range(10)]
    assert verdict("rows", points)["flat"]


def test_a_series_still_growing_is_not() -> None:
    """Growth of 10% over the half is more than the noise allows."""
    points = [(t * 15.0, 1000.0 + 12 * t) for t in range(10)]
    found = verdict("rows", points)
    assert not found["flat"]
    assert found["drift"] > 0
