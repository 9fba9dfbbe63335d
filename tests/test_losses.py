"""The contrastive loss functions, checked against cross-entropy and hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from make_hf.losses import (
    keyword_coverage,
    masked_logit_fill_value,
    multi_positive_info_nce,
    positive_mask_from_ids,
    symmetric_info_nce,
)


def test_single_positive_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 4
    targets = torch.tensor([0, 3, 6, 2, 2])
    positives = F.one_hot(targets, 7).bool()
    torch.testing.assert_close(multi_positive_info_nce(logits, positives), F.cross_entropy(logits, targets))


def test_multi_positive_soft_targets_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, -1.0]])
    positives = torch.tensor([[True, True, False], [False, True, False]])
    norm0 = math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5))
    norm1 = math.log(1 + math.exp(3.0) + math.exp(-1.0))
    expected = (-((2.0 - norm0) + (1.0 - norm0)) / 2 + -(3.0 - norm1)) / 2
    assert multi_positive_info_nce(logits, positives).item() == pytest.approx(expected, rel=1e-6)


def test_candidate_mask_removes_entries_from_the_denominator():
    logits = torch.tensor([[1.0, 5.0, 0.0]])
    positives = torch.tensor([[True, False, False]])
    without_column_1 = torch.tensor([[True, False, True]])
    expected = -(1.0 - math.log(math.exp(1.0) + 1.0))
    assert multi_positive_info_nce(logits, positives, without_column_1).item() == pytest.approx(expected, rel=1e-6)
    # Positives stay candidates even if the mask says otherwise.
    assert multi_positive_info_nce(logits, positives, ~positives).item() == pytest.approx(
        -(1.0 - math.log(math.exp(1.0) + math.exp(5.0) + 1.0)), rel=1e-6
    )


def test_rows_without_positive_are_ignored_and_gradients_stay_finite():
    logits = torch.randn(3, 4, requires_grad=True)
    positives = torch.tensor([[True, False, False, False], [False] * 4, [False, False, True, True]])
    candidates = torch.tensor([[True, False, False, False], [False] * 4, [False, True, True, True]])
    loss = multi_positive_info_nce(logits, positives, candidates)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert not logits.grad[1].any() and not logits.grad[0].any()  # row 0: its only candidate is its positive
    # Two rows have positives; row 0 contributes 0, row 2 its loss over columns 1-3.
    row_2 = multi_positive_info_nce(logits[2:, 1:].detach(), positives[2:, 1:])
    torch.testing.assert_close(loss.detach(), row_2 / 2)
    assert torch.isfinite(multi_positive_info_nce(logits, torch.zeros(3, 4, dtype=torch.bool)))


def test_num_rows_sets_the_divisor():
    logits = torch.randn(4, 4)
    positives = torch.eye(4, dtype=torch.bool)
    mean = multi_positive_info_nce(logits, positives)
    torch.testing.assert_close(multi_positive_info_nce(logits, positives, num_rows=2.0), mean * 2)


def test_fill_value_is_finite_and_never_produces_nan():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        fill = masked_logit_fill_value(dtype)
        assert math.isfinite(fill) and fill < -1e3
        logits = torch.tensor([[100.0, -100.0, 3.0]], dtype=dtype)
        positives = torch.tensor([[False, False, True]])
        loss = multi_positive_info_nce(logits, positives, torch.tensor([[False, False, True]]))
        assert loss.item() == 0.0


def test_symmetric_is_the_mean_of_both_directions():
    torch.manual_seed(1)
    logits = torch.randn(4, 4)
    positives = positive_mask_from_ids(torch.tensor([1, 2, 2, 3]), torch.tensor([1, 2, 2, 3]))
    expected = (multi_positive_info_nce(logits, positives) + multi_positive_info_nce(logits.T, positives.T)) / 2
    torch.testing.assert_close(symmetric_info_nce(logits, positives), expected)


def test_keyword_coverage():
    query_terms = torch.tensor([[5, 7, 0], [9, 0, 0], [0, 0, 0], [5, 5, 0]])
    keyword_terms = torch.tensor([[7, 5, 1, 0], [9, 2, 0, 0], [0, 0, 0, 0]])
    expected = torch.tensor(
        [
            [True, False, False],
            [False, True, False],
            [False, False, False],  # a query without terms is covered by nothing
            [True, False, False],
        ]
    )
    assert torch.equal(keyword_coverage(query_terms, keyword_terms), expected)
    # Chunking does not change the answer.
    assert torch.equal(keyword_coverage(query_terms, keyword_terms, chunk_elements=1), expected)
    assert keyword_coverage(query_terms[:0], keyword_terms).shape == (0, 3)


def test_keyword_coverage_matches_set_inclusion():
    generator = torch.Generator().manual_seed(0)
    query_terms = torch.randint(0, 6, (20, 3), generator=generator)
    keyword_terms = torch.randint(0, 6, (15, 5), generator=generator)
    covered = keyword_coverage(query_terms, keyword_terms)
    for i, query in enumerate(query_terms.tolist()):
        for j, keywords in enumerate(keyword_terms.tolist()):
            terms = {t for t in query if t}
            assert covered[i, j].item() == (bool(terms) and terms <= {t for t in keywords if t})
