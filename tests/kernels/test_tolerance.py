"""The one tolerance policy: finite values within a bound, NaN and Inf placed exactly."""

import math

import pytest
import torch

from fused.tolerance import assert_close, largest_finite, max_error, tolerance

NAN, INF = math.nan, math.inf
EXPECTED = torch.tensor([1.0, NAN, INF, -INF, 0.0, -2.5], dtype=torch.float64)


def test_matching_nan_and_inf_pass():
    actual = EXPECTED.float()
    assert_close(actual, EXPECTED)
    assert max_error(actual, EXPECTED) == 0.0


@pytest.mark.parametrize("index, wrong", [
    (1, 0.0),     # NaN dropped to 0 (tl.maximum's ReLU)
    (1, INF),     # NaN vs +Inf
    (2, NAN),     # Inf turned into NaN (Inf * 0)
    (3, INF),     # -Inf vs +Inf
    (2, 3.0e38),  # a huge finite value is not Inf
    (4, NAN),     # NaN where the reference is finite
    (5, -INF),
], ids=["nan-vs-0", "nan-vs-inf", "inf-vs-nan", "-inf-vs-inf", "inf-vs-finite", "0-vs-nan", "finite-vs-inf"])
def test_any_nonfinite_mismatch_fails_and_says_where(index, wrong):
    actual = EXPECTED.float().clone()
    actual[index] = wrong
    with pytest.raises(AssertionError, match=rf"out: NaN/Inf placement differs from the reference at 1 of 6 "
                                             rf"elements; first at index \({index},\)"):
        assert_close(actual, EXPECTED, what="out")
    assert max_error(actual, EXPECTED) == INF


def test_the_message_counts_every_mismatch_and_names_the_first():
    expected = torch.full((2, 3), NAN, dtype=torch.float64)
    expected[0, 0] = 1.0
    actual = torch.zeros(2, 3)
    actual[0, 0] = 1.0
    with pytest.raises(AssertionError, match=r"at 5 of 6 elements; first at index \(0, 1\): got 0.0, expected nan"):
        assert_close(actual, expected)


def test_finite_values_are_still_checked_next_to_nan():
    actual = EXPECTED.float().clone()
    actual[5] = -2.4
    with pytest.raises(AssertionError, match=r"1 of 6 elements out of tolerance.*index \(5,\)"):
        assert_close(actual, EXPECTED)
    assert max_error(actual, EXPECTED) == pytest.approx(0.1, rel=1e-6)


def test_the_bound_scales_with_the_largest_finite_value_not_inf():
    # With |Inf| as the magnitude every finite error would pass.
    assert largest_finite(EXPECTED) == 2.5
    assert largest_finite(torch.tensor([NAN, -INF])) == 1.0
    actual = EXPECTED.float().clone()
    actual[0] = 1.5
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(actual, EXPECTED)
    with pytest.raises(ValueError, match="magnitude must be finite"):
        assert_close(actual, EXPECTED, magnitude=INF)
    with pytest.raises(ValueError, match="magnitude must be finite"):
        tolerance(torch.float32, 9, NAN)


def test_exact_zeros_pass():
    zeros = torch.zeros(4, dtype=torch.float64)
    assert_close(zeros.float(), zeros)
    assert_close(torch.tensor([0.0, NAN]), torch.tensor([0.0, NAN], dtype=torch.float64))
