"""Build the model and processor that `--model` / `--init_from_towers` describe."""

import copy
import json
import os

from transformers import AutoConfig, AutoTokenizer

from .arguments import PretrainArguments


def build_model_and_processor(args: PretrainArguments, data, accelerator, resume_path: str | None = None):
    """Return `(model, processor)`.

    - a saved MAKE folder or hub id: both are loaded from it;
    - a preset name or a config JSON, with `--init_from_towers TEXT [VISION]`: towers from those checkpoints, the
      tokenizer from TEXT, the image preprocessing from VISION's config (e.g. a folder written by
      `make-hf convert-image-tower`);
    - a preset name or a config JSON with `--init_image_tower VISION`: that image tower, text towers from scratch;
    - a preset name or a config JSON alone: random towers and a WordPiece vocabulary trained on the training
      queries and titles (so nothing is downloaded).
    The keyword extractor is fitted on the training titles and queries. The main process builds the processor
    and the others load its saved copy, so every process tokenizes identically. When resuming, the processor
    saved with the checkpoint is used.
    """
    from .. import MakeConfig, MakeModel, MakeProcessor

    if _is_saved_model(args.model):
        return MakeModel.from_pretrained(args.model), MakeProcessor.from_pretrained(args.model)

    config = _config(args, MakeConfig)
    processor_dir = os.path.join(args.output_dir, "checkpoints", "processor")
    if resume_path is not None and os.path.isdir(os.path.join(resume_path, "processor")):
        processor = MakeProcessor.from_pretrained(os.path.join(resume_path, "processor"))
    else:
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                processor = _new_processor(args, config, data, MakeProcessor)
                processor.save_pretrained(processor_dir)
            else:
                processor = MakeProcessor.from_pretrained(processor_dir)

    text, vision = _pretrained_towers(args)
    if args.query_num_hidden_layers is not None and text is None:
        config.query_config.num_hidden_layers = args.query_num_hidden_layers
    if text is None:
        for text_config in (config.query_config, config.title_config):
            if text_config is not None:  # None: the title shares the query encoder
                text_config.vocab_size = len(processor.tokenizer)
    if text is None and vision is None:
        return MakeModel(config), processor

    # The preset (or config file) still decides everything but the pretrained towers: fusion, losses, sizes.
    fields = {name: getattr(config, name) for name in MakeConfig.__annotations__ if not name.endswith("_config")}
    if vision is not None and fields["vision_pooling"] == MakeConfig.vision_pooling:
        # The default pooling suits the preset's own ViT; a pretrained tower gets the one `from_towers` picks for
        # it (a timm tower's `pooler_output`). Another pooling, from the config file or the overrides, is kept.
        del fields["vision_pooling"]
    share = config.share_text_encoder
    model = MakeModel.from_towers(
        query=text or config.query_config,
        title=None if share else (text or config.title_config),
        vision=vision or config.vision_config,
        query_num_hidden_layers=args.query_num_hidden_layers if text is not None else None,
        **fields,
    )
    return model, processor


def _is_saved_model(name: str) -> bool:
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise FileNotFoundError(f"--model {name!r} is a folder without config.json; pass a saved MAKE model.")
        return True
    return "/" in name and not name.endswith(".json") and not os.path.exists(name)


def _config(args: PretrainArguments, config_class):
    if args.model.endswith(".json"):
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"--model {args.model!r}: no such config file.")
        with open(args.model, encoding="utf-8") as f:
            config = config_class(**json.load(f))
    else:
        config = config_class.from_preset(args.model)
    for assignment in filter(None, (args.config_overrides or "").split(",")):
        key, _, value = assignment.partition("=")
        if not hasattr(config, key.strip()):
            raise ValueError(f"--config_overrides: MakeConfig has no field {key.strip()!r}.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value.strip()
        setattr(config, key.strip(), parsed)
    if hasattr(config, "validate_make"):
        config.validate_make()
    return config


def _pretrained_towers(args: PretrainArguments) -> tuple[str | None, str | None]:
    """`(TEXT, VISION)` checkpoints from `--init_from_towers TEXT [VISION]` and `--init_image_tower VISION`."""
    towers = list(args.init_from_towers or [])
    if len(towers) > 2:
        raise ValueError(f"--init_from_towers takes TEXT [VISION], got {len(towers)} paths.")
    text, vision = (towers + [None, None])[:2]
    if vision is not None and args.init_image_tower is not None:
        raise ValueError("The image tower is given twice (--init_from_towers TEXT VISION and --init_image_tower): "
                         "keep one.")
    return text, vision or args.init_image_tower


def _new_processor(args: PretrainArguments, config, data, processor_class):
    from ..tokenization import train_tokenizer

    train = data.train
    queries = list(train["query"])
    titles = list(train["title"]) if "title" in train.column_names else [None] * len(queries)
    # Image-only products (no title, or no title column at all) give the tokenizer and the keywords nothing.
    pairs = [(title, query) for title, query in zip(titles, queries) if isinstance(title, str)]
    titles, queries_of_titles = [title for title, _ in pairs], [query for _, query in pairs]
    text, vision = _pretrained_towers(args)
    if text is not None:
        tokenizer = AutoTokenizer.from_pretrained(text)
    else:
        tokenizer = train_tokenizer(queries + titles, vocab_size=args.vocab_size)
    if vision is not None:
        # The pretrained image tower, not the preset, says how its images are preprocessed (size, crop, mean).
        config = copy.deepcopy(config)
        config.vision_config = AutoConfig.from_pretrained(vision)
    processor = processor_class.from_config(config, tokenizer)
    return processor.fit_keywords(titles, queries_of_titles)


__all__ = ["build_model_and_processor"]
