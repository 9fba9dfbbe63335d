"""What one request to `make-hf serve` may ask for: the bounds the service checks and the client respects."""

MAX_QUERY_CHARS = 256
"""Longest query, in characters. Shop queries are a few words; a longer text is not a query, and the tokenizer would
cut it anyway."""

MIN_K, MAX_K = 1, 100
"""Results per query: a results page shows tens, and an ANN index's recall is tuned for small k."""

MAX_QUERIES = 64
"""Queries in one `POST /search`: one batch of the query tower, so a request cannot hold the encoder for long."""

__all__ = ["MAX_K", "MAX_QUERIES", "MAX_QUERY_CHARS", "MIN_K"]
