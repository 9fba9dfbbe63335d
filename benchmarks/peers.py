"""Retrieval peers that need no training: BM25 over titles and a text-only sentence encoder (query -> title).

They score the same evaluation sets as `make_hf.evaluation.evaluate_retrieval` with the same metrics, so their
rows sit in the quality table next to the trained models. The trained text peer, a sentence-transformers
fine-tune, lives in `sentence_transformers_baseline.py`.

BM25 is `bm25s` (Lù 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring") rather
than a hand-written copy: a baseline is only convincing when it is the one a user would run.
"""

import logging

import torch

from make_hf.metrics import max_cutoff, mean_metrics, per_query_metrics, ranks_from_scores

BM25_LANGUAGES = ("en", "zh")
"""Languages `bm25_scores` can tokenise: English with bm25s' regex tokenizer, Chinese with jieba."""

# bm25s' default pattern, \w\w+, drops one-character tokens; in product titles and queries those carry meaning
# (sizes "s"/"m"/"l", "keycap: 1", "a button" vs "b button"), so every word character run is a token.
ENGLISH_TOKEN_PATTERN = r"(?u)\b\w+\b"


def bm25_tokens(texts: list[str], language: str = "en") -> list[list[str]]:
    """The BM25 terms of each text: lowercased words, no stopword list, no stemmer.

    English goes through `bm25s.tokenize` with `ENGLISH_TOKEN_PATTERN`. Chinese is written without spaces, so a
    word-boundary regex would make a whole title one token: it is segmented with `jieba.lcut` (precise mode)
    instead, dropping the whitespace and punctuation pieces jieba returns as tokens. No stemmer (PyStemmer is not
    a dependency, and the query/title variants of a shop are colloquial words, abbreviations and typos that a
    stemmer does not merge anyway); no stopword list either, since IDF already discounts the words every title
    has, and short queries lose meaning without them ("a button").
    """
    _check_language(language)
    _check_texts(texts, "texts")
    if language == "zh":
        import jieba

        jieba.setLogLevel(logging.WARNING)  # hides the "Building prefix dict" banner of its first use
        return [[token for token in jieba.lcut(text.lower()) if any(ch.isalnum() for ch in token)] for text in texts]
    import bm25s

    return bm25s.tokenize(
        list(texts), lower=True, token_pattern=ENGLISH_TOKEN_PATTERN, stopwords=None, return_ids=False,
        show_progress=False,
    )


def bm25_scores(
    queries: list[str], titles: list[str], language: str = "en", *, k1: float = 1.5, b: float = 0.75
) -> torch.Tensor:
    """BM25 score of every title for every query: a dense float32 tensor (num_queries, num_titles).

    Scored by `bm25s.BM25` with its default Lucene variant: IDF `log(1 + (N - df + 0.5) / (df + 0.5))` and term
    frequency saturation `tf / (tf + k1 * (1 - b + b * length / mean length))`. That is Okapi BM25 (Robertson and
    Zaragoza, 2009) without the constant factor `k1 + 1`, so rankings are Okapi's. A query term repeated in the
    query counts once per occurrence, as in bm25s' own retrieval. A title that shares no term with a query scores
    0 for it (ties are broken pessimistically by the metrics).

    Args:
        queries: query texts.
        titles: one title per catalogue product, in catalogue order (the columns of the result).
        language: `"en"` or `"zh"`, see `bm25_tokens`.
        k1, b: BM25 term-frequency saturation and length normalisation (the usual 1.5 and 0.75).
    """
    import bm25s

    _check_texts(queries, "queries")
    _check_texts(titles, "titles")
    if len(titles) == 0:
        raise ValueError("`titles` is empty: BM25 needs a catalogue to score.")
    _check_language(language)
    title_tokens = bm25_tokens(titles, language)
    if not any(title_tokens):
        raise ValueError(
            f"No title in `titles` has a single word to index (language={language!r}); check that the column "
            "holds the product titles."
        )
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(title_tokens, show_progress=False)
    scores = torch.zeros(len(queries), len(titles), dtype=torch.float32)
    for row, tokens in enumerate(bm25_tokens(queries, language)):
        token_ids = retriever.get_tokens_ids(tokens)  # terms no title has are left out
        if token_ids:  # get_scores fails on an empty query; its row stays all zero
            scores[row] = torch.from_numpy(retriever.get_scores_from_ids(token_ids))
    return scores


def _check_language(language: str) -> None:
    if language not in BM25_LANGUAGES:
        raise ValueError(f"`language` must be one of {BM25_LANGUAGES}, got {language!r}.")


def _check_texts(texts: list[str], argument: str) -> None:
    if isinstance(texts, str):
        raise ValueError(f"`{argument}` must be a list of strings, got a single string; wrap it in a list.")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`{argument}[{row}]` must be a string, got {type(text).__name__}.")


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


def peer_per_query_metrics(scores: torch.Tensor, products, queries) -> dict[str, torch.Tensor]:
    """Each metric for each query (as `make_hf.metrics.per_query_metrics`), e.g. for a paired bootstrap.

    Args:
        scores: (num_queries, num_products) scores, columns in the order of `products["product_id"]`.
        products: the catalogue (`product_id`).
        queries: `relevant_ids` per query (ids not in `products` are ignored).
    """
    index = {pid: i for i, pid in enumerate(products["product_id"])}
    relevant = [[index[pid] for pid in ids if pid in index] for ids in queries["relevant_ids"]]
    ranks, num_relevant = ranks_from_scores(scores, relevant, max_cutoff())
    return per_query_metrics(ranks, num_relevant)


def score_peer(scores: torch.Tensor, products, queries) -> dict:
    """Metrics overall and by query bucket / category group, in the layout of `evaluate_retrieval`."""
    per_query = peer_per_query_metrics(scores, products, queries)
    num_queries = len(queries["relevant_ids"])
    section = {"overall": {**mean_metrics(per_query), "num_queries": num_queries}}
    for column, key in (("bucket", "by_bucket"), ("category_group", "by_category_group")):
        if column in queries.column_names:
            labels = list(queries[column])
            section[key] = {}
            for label in sorted(set(labels)):
                mask = torch.tensor([value == label for value in labels])
                section[key][label] = {**mean_metrics(per_query, mask), "num_queries": int(mask.sum())}
    return {"title": section}


__all__ = [
    "BM25_LANGUAGES",
    "ENGLISH_TOKEN_PATTERN",
    "bm25_scores",
    "bm25_tokens",
    "peer_per_query_metrics",
    "score_peer",
    "sentence_encoder_scores",
]
