"""Where a `make-small` training step's time goes, and what it costs next to a CLIP step with the same towers.

On the synthetic shop at batch 64, one torch thread, in one process:

- data: fetching and collating a batch as the trainer's DataLoader does (datasets row access + `MakeCollator`:
  checks, image decoding and resizing, tokenisation, keywords, term ids), with the collator's default caches
  (keyword strings) and with a warm pixel cache (`--pixel_cache_mib`, a later epoch);
- compute: one training step (forward with every loss term, backward, AdamW, logit-scale clamp) on a collated
  batch, its forward split by forward hooks into the query tower (queries and keywords), the title tower, the
  image tower and the rest (projections, Modal Adaptation fusion, the six losses), and each tower's own forward +
  backward measured alone on the same inputs;
- transformers `CLIPModel` with a text tower the size of the title tower and a vision tower the size of the image
  tower (same widths, depths, heads, patch and image size, projection dimension), trained on the same batch's
  titles and images: its step time, and both models' FLOPs per step (`torch.utils.flop_counter.FlopCounterMode`,
  forward + backward), so that the time ratio can be read against the work ratio.

Run through `python benchmarks/training.py --breakdown`, which adds the result to training.json.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

ROUNDS = 5


def _median_seconds(function, rounds: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of `function()` over `rounds` calls, after one warm-up call."""
    function()
    wall, cpu = [], []
    for _ in range(rounds):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _shop_and_processor(num_products: int, batch_size: int):
    from make_hf import MakeConfig, MakeProcessor, train_tokenizer
    from make_hf.data import make_synthetic_shop

    shop = make_synthetic_shop(num_products, seed=0)
    train = shop["train"]
    titles, queries = list(train["title"]), list(train["query"])
    tokenizer = train_tokenizer(queries + titles, vocab_size=8192)
    config = MakeConfig.from_preset("make-small", vocab_size=len(tokenizer))
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(titles, queries)
    return train, config, processor


def _data_seconds(train, processor, batch_size: int, batches: int) -> dict:
    """Seconds per batch of row access + collation, as the trainer's loader does it (workers=0)."""
    from make_hf.data import MakeCollator
    from make_hf.image_feature_cache import keep_images_encoded

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(batches)]

    def per_batch(dataset, collator) -> float:
        started = time.perf_counter()
        for chunk in chunks:
            collator(dataset.__getitems__(chunk))
        return (time.perf_counter() - started) / len(chunks)

    encoded = keep_images_encoded(train)
    per_batch(train, MakeCollator(processor, keyword_cache_size=0))  # warm-up: first reads, lazy imports
    no_cache = per_batch(train, MakeCollator(processor, keyword_cache_size=0))
    keyword_collator = MakeCollator(processor)
    per_batch(train, keyword_collator)  # first epoch: fills the keyword cache
    keywords_cached = per_batch(train, keyword_collator)
    pixel_collator = MakeCollator(processor, pixel_cache_mib=1024)
    first_epoch = per_batch(encoded, pixel_collator)
    pixels_cached = per_batch(encoded, pixel_collator)
    return {
        "no_cache_seconds": no_cache,
        "keyword_cache_warm_seconds": keywords_cached,
        "pixel_cache_first_epoch_seconds": first_epoch,
        "pixel_and_keyword_cache_warm_seconds": pixels_cached,
        "batches_timed": batches,
        "pixel_cache_entries": len(pixel_collator.pixel_cache),
        "pixel_cache_mib_used": round(pixel_collator.pixel_cache.size / 2**20, 1),
    }


def _clip_model(config, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    title, vision = config.title_config, config.vision_config
    text_config = {
        "vocab_size": title.vocab_size, "hidden_size": title.hidden_size, "intermediate_size": title.intermediate_size,
        "num_hidden_layers": title.num_hidden_layers, "num_attention_heads": title.num_attention_heads,
        "max_position_embeddings": title.max_position_embeddings, "hidden_act": title.hidden_act,
        # CLIP pools the text at its end-of-text token: the tokenizer's [SEP], which ends every title.
        "eos_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.cls_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size,
        "num_hidden_layers": vision.num_hidden_layers, "num_attention_heads": vision.num_attention_heads,
        "image_size": vision.image_size, "patch_size": vision.patch_size, "hidden_act": vision.hidden_act,
    }
    clip_config = CLIPConfig(text_config=text_config, vision_config=vision_config,
                             projection_dim=config.projection_dim)
    return CLIPModel(clip_config).train()


class _ForwardClock:
    """Forward seconds of chosen submodules, summed over their calls, from forward pre/post hooks."""

    def __init__(self, modules: dict):
        self.seconds = dict.fromkeys(modules, 0.0)
        self._started = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda *_, name=name: self._start(name))
            module.register_forward_hook(lambda *_, name=name: self._stop(name))

    def _start(self, name):
        self._started[name] = time.perf_counter()

    def _stop(self, name):
        self.seconds[name] += time.perf_counter() - self._started.pop(name)

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def measure(batch_size: int = 64, num_products: int = 3200, rounds: int = ROUNDS, data_batches: int = 8) -> dict:
    """The breakdown described in the module docstring, in this process (set the thread count first)."""
    from make_hf import MakeModel
    from make_hf.data import MakeCollator

    torch.manual_seed(0)
    train, config, processor = _shop_and_processor(num_products, batch_size)
    data = _data_seconds(train, processor, batch_size, data_batches)
    batch = dict(MakeCollator(processor)(train.__getitems__(list(range(batch_size)))))

    model = MakeModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    towers = {"query_tower": model.query_model, "title_tower": model.title_model, "image_tower": model.vision_model}
    clock = _ForwardClock(towers)
    phases = {}

    def make_step():
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = model(**batch, return_loss=True).loss
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        model.clamp_logit_scale()
        phases.setdefault("forward", []).append(forward - started)
        phases.setdefault("backward", []).append(backward - forward)
        phases.setdefault("optimizer", []).append(time.perf_counter() - backward)

    clip = _clip_model(config, processor.tokenizer)
    clip_optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-4)
    clip_batch = {"input_ids": batch["title_input_ids"], "attention_mask": batch["title_attention_mask"],
                  "pixel_values": batch["pixel_values"]}

    def clip_step():
        clip_optimizer.zero_grad(set_to_none=True)
        clip(**clip_batch, return_loss=True).loss.backward()
        clip_optimizer.step()

    make_flops, clip_flops = _flops(make_step), _flops(clip_step)
    phases.clear()
    # Interleaved, so that a change of the machine's load touches both models alike.
    make_wall, make_cpu, clip_wall, clip_cpu, tower_forward = [], [], [], [], []
    make_step(), clip_step()
    phases.clear()
    for _ in range(rounds):
        clock.reset()
        wall, cpu = _one(make_step)
        make_wall.append(wall), make_cpu.append(cpu)
        tower_forward.append(dict(clock.seconds))
        wall, cpu = _one(clip_step)
        clip_wall.append(wall), clip_cpu.append(cpu)

    isolated = {}
    for name, module in towers.items():
        inputs = _tower_inputs(name, batch)

        def tower_step(module=module, inputs=inputs):
            module.zero_grad(set_to_none=True)
            sum(output.sum() for output in inputs(module)).backward()

        isolated[name] = _median_seconds(tower_step, rounds)[0]

    step = statistics.median(make_wall)
    forward = {name: statistics.median(row[name] for row in tower_forward) for name in towers}
    forward_total = statistics.median(phases["forward"])
    forward["heads_and_losses"] = forward_total - sum(forward.values())
    data_seconds = data["no_cache_seconds"]
    return {
        "batch_size": batch_size,
        "synthetic_products": num_products,
        "lengths": {"query": batch["query_input_ids"].shape[1], "title": batch["title_input_ids"].shape[1],
                    "keywords": batch["keyword_input_ids"].shape[1], "image": config.vision_config.image_size},
        "data_seconds_per_batch": data,
        "step_seconds": step,
        "step_cpu_seconds": statistics.median(make_cpu),
        "phases_seconds": {name: statistics.median(values) for name, values in phases.items()},
        "forward_seconds": forward,
        "tower_forward_backward_alone_seconds": isolated,
        "data_share_of_a_step": {
            "no_cache": data_seconds / (data_seconds + step),
            "keyword_cache_warm": data["keyword_cache_warm_seconds"] / (data["keyword_cache_warm_seconds"] + step),
            "pixel_and_keyword_cache_warm": data["pixel_and_keyword_cache_warm_seconds"]
            / (data["pixel_and_keyword_cache_warm_seconds"] + step),
        },
        "clip": {
            "step_seconds": statistics.median(clip_wall),
            "step_cpu_seconds": statistics.median(clip_cpu),
            "make_over_clip_step": step / statistics.median(clip_wall),
            "make_over_clip_step_cpu": statistics.median(make_cpu) / statistics.median(clip_cpu),
            "make_flops_per_step": make_flops,
            "clip_flops_per_step": clip_flops,
            "make_over_clip_flops": make_flops / clip_flops,
            "parameters": {"make": sum(p.numel() for p in model.parameters()),
                           "clip": sum(p.numel() for p in clip.parameters())},
        },
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _one(function) -> tuple[float, float]:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def _tower_inputs(name: str, batch: dict):
    """A function running tower `name` on this batch's inputs, returning the outputs to back-propagate from."""
    if name == "query_tower":
        return lambda module: [
            module(input_ids=batch["query_input_ids"], attention_mask=batch["query_attention_mask"]).last_hidden_state,
            module(input_ids=batch["keyword_input_ids"],
                   attention_mask=batch["keyword_attention_mask"]).last_hidden_state,
        ]
    if name == "title_tower":
        return lambda module: [module(input_ids=batch["title_input_ids"],
                                      attention_mask=batch["title_attention_mask"]).last_hidden_state]
    return lambda module: [module(pixel_values=batch["pixel_values"]).last_hidden_state]


__all__ = ["measure"]
