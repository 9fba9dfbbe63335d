"""Retrieval peers that need no training: BM25 over titles and a text-only sentence encoder (query -> title).

They score the same evaluation sets as `make_hf.evaluation.evaluate_retrieval` with the same metrics, so their
rows sit in the quality table next to the trained models.
"""

import math
import re
from collections import Counter

import torch

from make_hf.metrics import max_cutoff, mean_metrics, per_query_metrics, ranks_from_scores

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bm25_scores(queries: list[str], titles: list[str], k1: float = 1.5, b: float = 0.75) -> torch.Tensor:
    """Okapi BM25 (Robertson and Zaragoza, 2009) of every title for every query: (num_queries, num_titles)."""
    documents = [Counter(words(title)) for title in titles]
    lengths = torch.tensor([sum(doc.values()) for doc in documents], dtype=torch.float32)
    average = lengths.mean().clamp(min=1.0)
    frequency = Counter(term for doc in documents for term in doc)
    n = len(documents)
    scores = torch.zeros(len(queries), n)
    for row, query in enumerate(queries):
        for term in set(words(query)):
            if term not in frequency:
                continue
            idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
            tf = torch.tensor([doc.get(term, 0) for doc in documents], dtype=torch.float32)
            scores[row] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / average))
    return scores


@torch.no_grad()
def sentence_encoder_scores(queries: list[str], titles: list[str], model_path: str, batch_size: int = 128):
    """Cosine similarity of mean-pooled sentence-encoder embeddings (e.g. all-MiniLM-L6-v2): (queries, titles)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()

    def encode(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)

    return encode(queries) @ encode(titles).T


def score_peer(scores: torch.Tensor, products, queries) -> dict:
    """Metrics overall and by query bucket / category group, in the layout of `evaluate_retrieval`."""
    index = {pid: i for i, pid in enumerate(products["product_id"])}
    relevant = [[index[pid] for pid in ids if pid in index] for ids in queries["relevant_ids"]]
    ranks, num_relevant = ranks_from_scores(scores, relevant, max_cutoff())
    per_query = per_query_metrics(ranks, num_relevant)
    section = {"overall": {**mean_metrics(per_query), "num_queries": len(relevant)}}
    for column, key in (("bucket", "by_bucket"), ("category_group", "by_category_group")):
        if column in queries.column_names:
            labels = list(queries[column])
            section[key] = {}
            for label in sorted(set(labels)):
                mask = torch.tensor([value == label for value in labels])
                section[key][label] = {**mean_metrics(per_query, mask), "num_queries": int(mask.sum())}
    return {"title": section}


__all__ = ["bm25_scores", "sentence_encoder_scores", "score_peer", "words"]
