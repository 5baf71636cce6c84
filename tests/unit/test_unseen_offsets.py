"""benchmarks/unseen_offsets.py: the per-clip agreement of a driven mouth with its phonemes' mouth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import unseen_offsets
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return unseen_offsets


def test_a_mouth_that_lags_its_phonemes_is_found_at_that_lag(bench):
    rng = np.random.default_rng(0)
    phonemic = np.convolve(rng.normal(size=60), np.ones(3) / 3, mode="same")
    same = bench.opening_agreement(phonemic, phonemic)
    assert same["best_lag"] == 0 and same["r0"] == pytest.approx(1.0)
    late = np.concatenate([np.zeros(3), phonemic[:-3]])  # shows what the phonemes showed 3 frames earlier
    found = bench.opening_agreement(late, phonemic)
    assert found["best_lag"] == 3 and found["r_best"] > 0.95 and found["r0"] < 0.5
    assert bench.opening_agreement(-phonemic, phonemic)["r0"] == pytest.approx(-1.0)


def test_the_drivers_are_named(bench):
    with pytest.raises(ValueError, match="driver 'loudness'"):
        bench.make_clip(0, 29, 9, np.random.default_rng(0), driver="loudness")
