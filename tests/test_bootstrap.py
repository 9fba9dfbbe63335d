"""The paired bootstrap interval against cases with known answers and a slow reference implementation."""

import math

import numpy as np
import pytest
import torch

from make_hf.metrics import BootstrapInterval, paired_bootstrap_interval


def _reference_interval(first, second, num_resamples, confidence, seed):
    # One resample at a time, in plain Python, with the index draws the docstring promises.
    difference = [a - b for a, b in zip(first, second)]
    n = len(difference)
    generator = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(num_resamples):
        indices = torch.randint(n, (n,), generator=generator).tolist()
        means.append(sum(difference[i] for i in indices) / n)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])  # numpy's default: linear interpolation
    return sum(difference) / n, float(low), float(high)


def _per_query_recalls(num_queries, seed):
    # Multiples of 1/4, as recall values with up to four relevant products: every sum of them is exact in float64,
    # so the vectorised and the looped means agree to the last bit whatever the summation order.
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 5, (num_queries,), generator=generator).double() / 4).tolist()


def test_identical_systems_give_zero():
    values = _per_query_recalls(50, seed=1)
    interval = paired_bootstrap_interval(values, values, num_resamples=500)
    assert interval == BootstrapInterval(0.0, 0.0, 0.0, 0.95, 50, 500)
    assert not interval.excludes_zero()


def test_better_on_every_query_is_strictly_above_zero():
    generator = torch.Generator().manual_seed(2)
    second = torch.rand(200, generator=generator, dtype=torch.float64)
    first = second + 0.01 + 0.5 * torch.rand(200, generator=generator, dtype=torch.float64)
    interval = paired_bootstrap_interval(first, second, num_resamples=2000)
    assert 0 < interval.low < interval.mean_difference < interval.high
    assert interval.excludes_zero()
    # Swapping the systems mirrors the interval.
    swapped = paired_bootstrap_interval(second, first, num_resamples=2000)
    assert swapped.high < 0 and swapped.mean_difference == pytest.approx(-interval.mean_difference)


def test_matches_the_looped_reference():
    first, second = _per_query_recalls(30, seed=3), _per_query_recalls(30, seed=4)
    interval = paired_bootstrap_interval(first, second, num_resamples=400, confidence=0.9, seed=7)
    mean, low, high = _reference_interval(first, second, num_resamples=400, confidence=0.9, seed=7)
    assert interval.mean_difference == mean
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    # Not vacuous: a spread-out interval, and another seed moves its ends (the agreement is draw for draw).
    assert interval.low < interval.mean_difference < interval.high
    other_seed = _reference_interval(first, second, num_resamples=400, confidence=0.9, seed=8)
    assert (other_seed[1], other_seed[2]) != (low, high)
    assert (interval.num_queries, interval.num_resamples, interval.confidence) == (30, 400, 0.9)


def test_chunks_do_not_change_the_result(monkeypatch):
    first, second = _per_query_recalls(40, seed=5), _per_query_recalls(40, seed=6)
    whole = paired_bootstrap_interval(first, second, num_resamples=1001, seed=3)
    monkeypatch.setattr("make_hf.metrics._BOOTSTRAP_CHUNK_ELEMENTS", 40 * 7)  # 7 resamples a chunk, a ragged end
    assert paired_bootstrap_interval(first, second, num_resamples=1001, seed=3) == whole
    monkeypatch.setattr("make_hf.metrics._BOOTSTRAP_CHUNK_ELEMENTS", 1)  # one resample a chunk
    assert paired_bootstrap_interval(first, second, num_resamples=1001, seed=3) == whole


def test_width_agrees_with_the_normal_approximation():
    # Independent of the reference above: for many queries the bootstrap distribution of a mean is close to
    # normal with standard error std / sqrt(n).
    generator = torch.Generator().manual_seed(9)
    first = (torch.rand(1000, generator=generator) < 0.7).double()
    second = (torch.rand(1000, generator=generator) < 0.6).double()
    interval = paired_bootstrap_interval(first, second)
    difference = (first - second).numpy()
    half_width = 1.959964 * difference.std() / math.sqrt(len(difference))
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert interval.low < difference.mean() < interval.high


def test_deterministic_for_a_seed():
    first, second = _per_query_recalls(60, seed=10), _per_query_recalls(60, seed=11)
    assert paired_bootstrap_interval(first, second, seed=1) == paired_bootstrap_interval(first, second, seed=1)
    assert paired_bootstrap_interval(first, second, seed=1) != paired_bootstrap_interval(first, second, seed=2)


def test_accepts_tensors_arrays_and_lists():
    first, second = _per_query_recalls(20, seed=12), _per_query_recalls(20, seed=13)
    expected = paired_bootstrap_interval(first, second, num_resamples=300)
    assert paired_bootstrap_interval(torch.tensor(first), np.array(second), num_resamples=300) == expected
    assert paired_bootstrap_interval(torch.tensor(first).float(), second, num_resamples=300).num_queries == 20


@pytest.mark.parametrize(
    "first, second, kwargs, message",
    [
        ([1.0, 0.0], [1.0], {}, "`first` has 2 values but `second` has 1"),
        ([], [], {}, "`first` is empty"),
        ([1.0], [], {}, "`second` is empty"),
        ([1.0, math.nan], [1.0, 0.0], {}, r"`first\[1\]` is nan"),
        ([1.0, 0.0], [math.inf, 0.0], {}, r"`second\[0\]` is inf"),
        ([[1.0, 0.0]], [[1.0, 0.0]], {}, "`first` must be 1-D"),
        (["a"], [1.0], {}, "`first` must be a 1-D sequence of numbers"),
        ([1.0], [1.0], {"confidence": 1.0}, "`confidence` must be a number strictly between 0 and 1"),
        ([1.0], [1.0], {"confidence": 95}, "`confidence` must be a number strictly between 0 and 1"),
        ([1.0], [1.0], {"num_resamples": 0}, "`num_resamples` must be a positive integer"),
        ([1.0], [1.0], {"num_resamples": 10.5}, "`num_resamples` must be a positive integer"),
        ([1.0], [1.0], {"seed": "0"}, "`seed` must be an integer"),
    ],
)
def test_errors_name_the_argument(first, second, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_interval(first, second, **kwargs)
