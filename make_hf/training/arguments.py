"""Every knob of MAKE pre-training, with its default, in one visible place."""

import os
from dataclasses import dataclass, field

DEFAULT_MAX_TRAIN_STEPS = 300
"""The length of a run given neither --max_train_steps nor --num_train_epochs."""


def default_output_dir(model: str, dataset: str) -> str:
    """`outputs/<model>-<dataset name>`: a preset or dataset keyword as given, a file, folder or hub id by its last
    path component (without a file extension)."""

    def name(value: str) -> str:
        base = os.path.basename(os.path.normpath(value))
        stem, extension = os.path.splitext(base)
        return stem if extension.lower() in (".json", ".jsonl", ".csv", ".tsv", ".parquet") else base

    return os.path.join("outputs", f"{name(model)}-{name(dataset)}")


@dataclass
class PretrainArguments:
    """Arguments of `examples/pretrain.py` (parsed with `transformers.HfArgumentParser`)."""

    # Model
    model: str = field(
        default="make-small",
        metadata={"help": "A preset name (make-tiny, make-small, make-base, clip, make-no-ma, make-no-ke, "
                  "make-shared-encoder, make-fn-mask), a MakeConfig JSON file, or a saved model folder / hub id."},
    )
    init_from_towers: list[str] | None = field(
        default=None,
        metadata={"help": "Initialise the towers from encoder checkpoints: TEXT [VISION]. TEXT (a hub id or folder, "
                  "e.g. a sentence-transformers MiniLM) initialises the query and title towers and gives the "
                  "tokenizer; VISION, if given, initialises the image tower. The other sizes come from --model."},
    )
    init_image_tower: str | None = field(
        default=None,
        metadata={"help": "Initialise only the image tower from this checkpoint (e.g. a folder written by `make-hf "
                  "convert-image-tower`), the text towers being trained from scratch; with TEXT, use "
                  "--init_from_towers TEXT VISION instead."},
    )
    query_num_hidden_layers: int | None = field(
        default=None,
        metadata={"help": "Layers of the query encoder (default: those of --model or TEXT). From TEXT, evenly spaced "
                  "layers are kept (every other one for half). The query tower is the only one run per request."},
    )
    lock_image_tower: bool = field(
        default=False,
        metadata={"help": "Freeze the image encoder (batch norm in eval mode) and compute each distinct image's "
                  "features once, cached on disk (LiT); the image projection and Modal Adaptation still train."},
    )
    image_feature_cache: str | None = field(
        default=None,
        metadata={"help": "Folder of the locked image tower's feature cache (default: <output_dir>/image_features). "
                  "Entries are keyed by image content and tower, so several runs can share one folder."},
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "WordPiece vocabulary trained on the corpus when training from scratch."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated MakeConfig overrides, e.g. 'fusion=mean,projection_dim=128'."}
    )

    # Data
    dataset: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (built-in shop), 'emoji-en' / 'emoji-zh' (Emoji-CLDR-3D), a JSONL/CSV/Parquet "
                  "file of (query, title, image, product_id) rows, a folder saved with datasets, or a hub dataset."},
    )
    emoji_data_dir: str | None = field(
        default=None, metadata={"help": "Folder with the Emoji-CLDR-3D npm tarballs (fetched with npm when absent)."}
    )
    synthetic_products: int = field(
        default=3200, metadata={"help": "Products in the synthetic shop (half for training)."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic shop (fixed across runs)."})
    query_column: str = field(default="query", metadata={"help": "Column holding the shopper query."})
    title_column: str = field(default="title", metadata={"help": "Column holding the product title."})
    image_column: str = field(default="image", metadata={"help": "Column holding the image (path, bytes or PIL)."})
    product_id_column: str = field(default="product_id", metadata={"help": "Column holding the product id."})
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of products held out for validation, and as much again for test, when the data has "
                  "no such splits; each split gets at least 200 products (at most a quarter of them) so that "
                  "Recall@k is measured on a catalogue of at least 10·k products where the data allows it."},
    )
    max_eval_queries: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many queries during training (all at the end)."}
    )

    # Optimisation
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where everything is written. Default: outputs/<model>-<dataset name> (e.g. "
                  "outputs/make-small-synthetic, outputs/make-base-my_logs for --dataset data/my_logs.jsonl), so "
                  "runs on other models or data do not overwrite each other."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data order and dropout."})
    per_device_train_batch_size: int = field(
        default=64,
        metadata={"help": "Rows per process per micro-batch; at least 2, the other rows being each row's negatives."},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (matrices only)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    num_train_epochs: int | None = field(
        default=None,
        metadata={"help": "Passes over the training rows; takes effect when --max_train_steps is not given (which "
                  f"wins when both are). Given neither, a run is {DEFAULT_MAX_TRAIN_STEPS} steps."},
    )
    max_train_steps: int | None = field(
        default=None,
        metadata={"help": f"Optimiser steps; overrides --num_train_epochs. Default: {DEFAULT_MAX_TRAIN_STEPS} unless "
                  "--num_train_epochs is given."},
    )
    warmup_steps: int = field(
        default=50,
        metadata={"help": "Linear warm-up steps before the cosine decay. A warm-up not shorter than the run would "
                  "never reach the peak learning rate: it is then capped at a tenth of the run, with a warning."},
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Any transformers scheduler name."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "'no', 'fp16' or 'bf16'; default: what `accelerate launch` was given."}
    )
    activation_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    gradcache_chunk_size: int | None = field(
        default=None,
        metadata={"help": "GradCache (Gao et al. 2021): encode each micro-batch in chunks of this many rows, first "
                  "without a graph for the full-batch loss, then chunk by chunk with the loss's embedding gradients, "
                  "so the contrastive batch (and its negatives) can be larger than what fits in memory; costs a second "
                  "encoder forward pass. Default: off (the whole micro-batch at once)."},
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "DataLoader worker processes that collate batches (decode images, tokenize, extract "
                  "keywords) while the model trains; 0 (the default) collates in the training process. Each worker "
                  "holds its own collator caches (--pixel_cache_mib each)."},
    )
    pixel_cache_mib: int = field(
        default=0,
        metadata={"help": "MiB of processed pixel tensors the collator keeps (one per distinct image, LRU), so that a "
                  "cached image is not decoded and resized again in later epochs. An image costs 3*H*W*4 bytes: 48 "
                  "KiB at 64 px (100k images: 4.7 GiB), 588 KiB at 224 px (57 GiB). Default 0: decode every batch."},
    )
    num_cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Torch threads of a run on the CPU. Default: what the environment says (OMP_NUM_THREADS), "
                  "except that a single CPU process under `accelerate launch` without --cpu, which accelerate gives "
                  "one thread, uses every physical core."},
    )

    # Evaluation, checkpoints, logging
    eval_steps: int = field(
        default=100,
        metadata={"help": "Evaluate on the validation split every N steps (0: never; not below the run's steps: "
                  "never either, with a warning). The test split is evaluated at the end in any case."},
    )
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size for encoding during evaluation."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save the training state every N steps."})
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "Keep only the newest K checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint-<step> folder, or 'latest' in <output_dir>/checkpoints."}
    )
    per_query_results: bool = field(
        default=False,
        metadata={"help": "Also write each test query's metrics into eval_results.json (for paired comparisons)."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the loss terms every N steps."})
    report_to: str = field(
        default="none",
        metadata={"help": "Trackers for accelerate: 'none' (the default, as in transformers 5: no tracker, no warning "
                  "when none is installed), 'all' (every installed one) or names such as 'tensorboard,wandb'."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push model, processor and card when done."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the hub repository as private."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = default_output_dir(self.model, self.dataset)
        if self.gradcache_chunk_size is not None and self.gradcache_chunk_size < 1:
            raise ValueError(
                f"--gradcache_chunk_size must be at least 1 (or left unset for no GradCache), got "
                f"{self.gradcache_chunk_size}."
            )
        for name in ("dataloader_num_workers", "pixel_cache_mib"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be 0 or more, got {getattr(self, name)}.")
        if self.num_cpu_threads is not None and self.num_cpu_threads < 1:
            raise ValueError(f"--num_cpu_threads must be at least 1, got {self.num_cpu_threads}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.per_device_train_batch_size == 1:
            # The contrastive losses score each row against the other rows of its batch: with one row the loss is
            # exactly zero and nothing is learnt.
            raise ValueError(
                "--per_device_train_batch_size 1 leaves contrastive learning without in-batch negatives (the loss "
                "is exactly zero). Use 2 or more (the default is 64); to fit memory, lower --eval_batch_size or use "
                "--activation_checkpointing instead."
            )
        for name in ("max_train_steps", "num_train_epochs", "checkpointing_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1 (or left unset), got {getattr(self, name)}.")
        if self.max_train_steps is None and self.num_train_epochs is None:
            self.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be 0 (no warm-up) or more, got {self.warmup_steps}.")
        if self.eval_steps < 0:
            raise ValueError(f"--eval_steps must be 0 (no validation during training) or more, got {self.eval_steps}.")


__all__ = ["PretrainArguments", "default_output_dir"]
