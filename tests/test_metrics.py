"""Retrieval metrics against rankings whose values are worked out by hand."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from make_hf.metrics import (
    RetrievalMetrics,
    max_cutoff,
    mean_metrics,
    per_query_metrics,
    ranks_from_rankings,
    ranks_from_scores,
    retrieval_metrics,
    retrieval_metrics_from_scores,
)

LOG2_3 = math.log2(3)


def test_single_relevant_at_rank_two():
    result = retrieval_metrics([["b", "a", "c"]], [["a"]], recall_ks=(1, 2, 5))
    assert result == pytest.approx(
        {"recall@1": 0.0, "recall@2": 1.0, "recall@5": 1.0, "mrr@10": 0.5, "ndcg@10": 1 / LOG2_3}
    )
    assert list(result) == ["recall@1", "recall@2", "recall@5", "mrr@10", "ndcg@10"]


def test_several_relevant_products():
    # Relevant a, c, e at ranks 1, 3, and e missing from the list.
    result = retrieval_metrics([["a", "b", "c", "d"]], [["a", "c", "e"]], recall_ks=(1, 2, 3, 10))
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / LOG2_3 + 1 / math.log2(4)
    assert result == pytest.approx(
        {
            "recall@1": 1.0,  # 1 of min(1, 3)
            "recall@2": 0.5,  # 1 of min(2, 3)
            "recall@3": 2 / 3,
            "recall@10": 2 / 3,  # e never retrieved
            "mrr@10": 1.0,
            "ndcg@10": dcg / idcg,
        }
    )


def test_none_retrieved_and_beyond_cutoff():
    rankings = [["x", "y"], [f"n{i}" for i in range(12)] + ["r"]]  # second relevant at rank 13
    result = retrieval_metrics(rankings, [["r"], ["r"]], recall_ks=(1, 10, 50))
    assert result == pytest.approx(
        {"recall@1": 0.0, "recall@10": 0.0, "recall@50": 0.5, "mrr@10": 0.0, "ndcg@10": 0.0}
    )


def test_empty_ranking_scores_zero():
    assert retrieval_metrics([[]], [["a"]], recall_ks=(1,))["recall@1"] == 0.0


def test_mean_over_queries_and_per_query_values():
    ranks, num_relevant = ranks_from_rankings([["a", "b"], ["b", "a"]], [["a"], ["a", "b"]])
    assert torch.equal(num_relevant, torch.tensor([1, 2]))
    assert ranks[0, 0] == 1 and math.isinf(ranks[0, 1])  # padding slot
    per_query = per_query_metrics(ranks, num_relevant, recall_ks=(1,))
    assert per_query["recall@1"].tolist() == [1.0, 1.0]  # 1 of min(1, 2) for the second query
    assert per_query["ndcg@10"].tolist() == pytest.approx([1.0, 1.0])
    assert mean_metrics(per_query, torch.tensor([True, False]))["recall@1"] == 1.0


def test_duplicate_relevant_ids_count_once():
    assert retrieval_metrics([["a", "b"]], [["a", "a"]], recall_ks=(1,))["recall@1"] == 1.0


def test_ties_are_broken_pessimistically():
    # Column 1 is relevant and ties with 0 and 2: the two non-relevant ones go first.
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1]])
    ranks, _ = ranks_from_scores(scores, [[1]], max_rank=10)
    assert ranks.tolist() == [[3.0]]
    # Two relevant among four tied: ranks 3 and 4 whatever their columns.
    ranks, _ = ranks_from_scores(torch.ones(1, 4), [[3, 0]], max_rank=10)
    assert sorted(ranks[0].tolist()) == [3.0, 4.0]
    # A collapsed model (all scores equal) gets nothing at the top.
    collapsed = retrieval_metrics_from_scores(torch.zeros(3, 100), [[0], [1], [2]], recall_ks=(1, 10))
    assert collapsed["recall@1"] == 0.0 and collapsed["recall@10"] == 0.0


def test_tie_at_the_cutoff_boundary():
    # 60 items; the relevant one (column 59) ties with 55 others at the same score below four leaders.
    scores = torch.cat([torch.full((4,), 2.0), torch.ones(56)]).unsqueeze(0)
    ranks, _ = ranks_from_scores(scores, [[59]], max_rank=50)
    assert math.isinf(ranks.item())  # pessimistic rank 60 > 50
    ranks, _ = ranks_from_scores(scores, [[59]], max_rank=60)
    assert ranks.item() == 60.0
    ranks, _ = ranks_from_scores(scores, [[2]], max_rank=50)  # among the leaders: rank 4
    assert ranks.item() == 4.0


def test_minus_infinity_is_never_retrieved():
    scores = torch.tensor([[-math.inf, 0.3, 0.2]])
    result = retrieval_metrics_from_scores(scores, [[0]], recall_ks=(1, 50))
    assert result["recall@50"] == 0.0 and result["mrr@10"] == 0.0


def _reference_ranking(row: np.ndarray, relevant: set[int]) -> list[int]:
    # The documented order, spelled out: score descending, non-relevant before relevant, then column.
    return sorted(range(len(row)), key=lambda j: (-row[j], j in relevant, j))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    num_queries=st.integers(1, 6),
    num_items=st.integers(1, 70),
)
def test_scores_match_the_sorted_reference(data, num_queries, num_items):
    # Few distinct score values, so ties everywhere, including across the rank-50 boundary.
    values = st.sampled_from([-math.inf, 0.0, 0.25, 0.5, 1.0])
    scores = np.array(
        data.draw(st.lists(st.lists(values, min_size=num_items, max_size=num_items),
                           min_size=num_queries, max_size=num_queries))
    )
    relevant = data.draw(
        st.lists(st.lists(st.integers(0, num_items - 1), min_size=1, max_size=5),
                 min_size=num_queries, max_size=num_queries)
    )
    # Reference: explicit ranking, with -inf items removed (they are never retrieved).
    rankings = [
        [j for j in _reference_ranking(row, set(rel)) if row[j] > -math.inf] for row, rel in zip(scores, relevant)
    ]
    expected = retrieval_metrics(rankings, relevant, recall_ks=(1, 5, 10, 50))
    actual = retrieval_metrics_from_scores(torch.tensor(scores), relevant, recall_ks=(1, 5, 10, 50))
    assert actual == pytest.approx(expected)


def test_chunked_scores_match_one_chunk(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (37, 300), generator=generator).float()
    relevant = [[int(i) % 300, int(i * 7) % 300] for i in range(37)]
    whole = ranks_from_scores(scores, relevant, max_rank=50)[0]
    monkeypatch.setattr("make_hf.metrics._CHUNK_ELEMENTS", 1000)  # forces one query per chunk
    assert torch.equal(ranks_from_scores(scores, relevant, max_rank=50)[0], whole)


def test_max_cutoff():
    assert max_cutoff() == 50
    assert max_cutoff((1, 5), mrr_k=20, ndcg_k=10) == 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rankings": [["a"]], "relevant": [[]]}, r"relevant\[0\]` is empty"),
        ({"rankings": [["a"]], "relevant": [["a"], ["b"]]}, "2 rows but there are 1 queries"),
        ({"rankings": [["a", "b", "a"]], "relevant": [["a"]]}, r"rankings\[0\]` lists 'a' twice"),
        ({"rankings": [["a"]], "relevant": ["a"]}, r"relevant\[0\]` must be a list"),
        ({"rankings": [["a"]], "relevant": [["a"]], "recall_ks": (0,)}, "positive integers"),
        ({"rankings": [], "relevant": []}, "empty"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**kwargs)


def test_score_errors():
    with pytest.raises(ValueError, match=r"relevant\[0\]` holds 5"):
        retrieval_metrics_from_scores(torch.zeros(1, 3), [[5]])
    with pytest.raises(ValueError, match=r"scores\[1\]` contains NaN"):
        retrieval_metrics_from_scores(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]), [[0], [1]])
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics_from_scores(torch.zeros(3), [[0]])


def test_evaluate_metric_matches_functions():
    rankings = [["a", "b", "c"], ["c", "a"], ["d"]]
    relevant = [["b"], ["a", "c"], ["z"]]
    metric = RetrievalMetrics()
    for ranking, rel in zip(rankings, relevant):  # accumulate batch by batch
        metric.add_batch(predictions=[ranking], references=[rel])
    assert metric.compute(recall_ks=(1, 2)) == pytest.approx(retrieval_metrics(rankings, relevant, recall_ks=(1, 2)))
    # Integer ids work too.
    assert RetrievalMetrics().compute(predictions=[[3, 1]], references=[[1]]) == retrieval_metrics([[3, 1]], [[1]])


def test_evaluate_metric_on_scores_matches_functions():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (8, 60), generator=generator).double()
    relevant = [[i, (i * 11) % 60] for i in range(8)]
    metric = RetrievalMetrics("scores")
    result = metric.compute(predictions=scores.tolist(), references=relevant)
    assert result == pytest.approx(retrieval_metrics_from_scores(scores, relevant))
    assert set(result) == {"recall@1", "recall@5", "recall@10", "recall@50", "mrr@10", "ndcg@10"}


def test_evaluate_metric_rejects_unknown_config():
    with pytest.raises(ValueError, match="Unknown config 'nope'"):
        RetrievalMetrics("nope")
