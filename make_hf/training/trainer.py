"""The MAKE pre-training loop on Accelerate: one function, `pretrain(args)`, used by `examples/pretrain.py`.

The loop follows the transformers `*_no_trainer.py` examples: `accelerator.prepare`, `accelerator.accumulate`,
`save_state` / `load_state` for exact resumption, and a final `save_pretrained` by the main process after
`wait_for_everyone()`. It is kept apart from the model so that `make_hf` imports without the training stack.
"""

import dataclasses
import json
import math
import os
import time

import psutil
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..data import MakeCollator, SkippedRows, catalogue_of
from ..hard_negatives import NEGATIVES_COLUMN
from ..evaluation import evaluate_retrieval, format_results
from ..modeling_make import MakeOutput
from .arguments import DEFAULT_MAX_TRAIN_STEPS, PretrainArguments, default_output_dir
from ..atomic import atomic_path, remove_interrupted_writes, staged_directory, write_json, write_text
from .callbacks import as_callbacks, call_hooks, stop_requested
from .checkpoints import (
    explained_save_failure,
    prune_checkpoints,
    publish_checkpoint,
    remove_interrupted_checkpoints,
    resolve_resume_path,
    staging_path,
)
from .gradcache import GradCache
from .in_memory import pretraining_data, run_arguments
from .optimization import create_optimizer
from .plots import plot_losses, plot_recall
from .setup import build_model_and_processor
from .step_timing import StepTimer

logger = get_logger(__name__)

# `loss` and every loss term, in the order `MakeOutput` declares them.
LOSS_TERMS = tuple(field.name for field in dataclasses.fields(MakeOutput) if field.name.endswith("loss"))


def pretrain(
    args: PretrainArguments, train_dataset=None, eval_dataset=None, test_dataset=None, callbacks=None
) -> dict:
    """Train MAKE as `args` says; return the final evaluation (also written to `args.output_dir`).

    Args:
        args: every setting of the run (`examples/pretrain.py --help` lists them).
        train_dataset (*optional*): training rows instead of `args.dataset`: a `datasets.Dataset` or a list of row
            dicts (query, title, image, product_id), checked as a training file is (`make_hf.training.in_memory`).
        eval_dataset, test_dataset (*optional*): the validation set (scored every `eval_steps`) and the test set
            (scored at the end): a dict / `DatasetDict` of `products` and `queries`, or training-style rows. Each
            one not given is held out of `train_dataset` by product, as a training file is split.
        callbacks (*optional*): functions `fn(step, metrics, model)` called after each validation, or
            `TrainingCallback`s; one returning True stops the run (`make_hf.training.callbacks`).
    """
    callbacks = as_callbacks(callbacks)
    args = run_arguments(args, train_dataset)
    accelerator = Accelerator(
        cpu=_multi_process_without_gpu(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # A sampler seeded per epoch makes the data order reproducible, which exact resumption needs.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=args.seed, non_blocking=torch.cuda.is_available()
        ),
    )
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. my-org/make-small).")
    if accelerator.device.type == "cpu":
        threads = cpu_threads(args.num_cpu_threads, accelerator.num_processes)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        logger.info(f"Training on the CPU with {torch.get_num_threads()} torch thread(s) per process.")
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    checkpoint_dir = os.path.join(args.output_dir, "checkpoints")
    if accelerator.is_main_process:
        removed = remove_interrupted_writes(args.output_dir) + remove_interrupted_checkpoints(checkpoint_dir)
        if removed:
            logger.info(f"Removed what an interrupted run left: {', '.join(removed)}", main_process_only=True)
    accelerator.wait_for_everyone()

    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = resolve_resume_path(args.resume_from_checkpoint, checkpoint_dir)

    data = pretraining_data(args, train_dataset, eval_dataset, test_dataset)
    model, processor = build_model_and_processor(args, data, accelerator, resume_path)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    image_features = _locked_image_features(args, model, processor, data, accelerator)

    # Mined hard negatives (a `negatives` column) are looked up among the training products only.
    negatives = NEGATIVES_COLUMN in data.train.column_names
    if args.pixel_cache_mib:  # pixels are cached by the encoded image's content: the collator decodes, once
        from ..image_feature_cache import keep_images_encoded

        data.train = keep_images_encoded(data.train)
    workers = args.dataloader_num_workers
    collator = MakeCollator(
        processor, image_features=image_features, products=catalogue_of(data.train) if negatives else None,
        pixel_cache_mib=args.pixel_cache_mib,
        # Workers collate in their own processes: what they drop comes back with the batch.
        report_key="collator_report" if workers else None,
    )
    train_dataloader = DataLoader(
        data.train,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # equal batches on every process; a contrastive batch of 3 is mostly noise anyway
        collate_fn=collator,
        # Its own generator: creating an iterator would otherwise draw from the global torch RNG and shift the
        # dropout stream of a resumed run away from the uninterrupted one.
        generator=torch.Generator().manual_seed(args.seed),
        num_workers=workers,
        persistent_workers=workers > 0,  # keep the workers' caches from one epoch to the next
        pin_memory=accelerator.device.type == "cuda",  # then accelerate copies with non_blocking=True
    )
    if len(train_dataloader) == 0:
        raise ValueError(
            f"The training set has {len(data.train)} rows, fewer than one batch of "
            f"--per_device_train_batch_size {args.per_device_train_batch_size} per process. Lower the batch size."
        )
    optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    grad_cache = None
    if args.gradcache_chunk_size:
        grad_cache = GradCache.for_accelerator(accelerator, model, args.gradcache_chunk_size)

    # Counted on the prepared (per-process) loader; the last step of an epoch may have fewer micro-batches.
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    warmup_steps = _warmup_steps(args, max_train_steps)
    if args.eval_steps >= max_train_steps:
        logger.warning(
            f"--eval_steps {args.eval_steps} is not below the run's {max_train_steps} steps: there is no validation "
            "during training, only the final test evaluation. Lower --eval_steps to follow validation recall.",
            main_process_only=True,
        )
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        # A prepared scheduler steps once per process for every optimiser step.
        num_warmup_steps=warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)

    if args.report_to != "none":
        accelerator.init_trackers("make_pretraining", config=_tracker_config(args))

    completed_steps, history, evaluations = 0, [], []
    stopped = False  # by a callback
    if resume_path is not None:
        accelerator.load_state(resume_path)
        with open(os.path.join(resume_path, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        completed_steps, history, evaluations = state["step"], state["history"], state["evaluations"]
        logger.info(f"Resumed from {resume_path} at step {completed_steps}.", main_process_only=True)
        if completed_steps > max_train_steps:
            raise ValueError(
                f"--resume_from_checkpoint {resume_path!r} is at step {completed_steps}, past --max_train_steps "
                f"{max_train_steps}. Raise --max_train_steps, or resume from an earlier checkpoint."
            )
        if completed_steps == max_train_steps:
            logger.info(
                f"The checkpoint is at --max_train_steps {max_train_steps}: training is complete, so no step is "
                "trained; the model is saved and evaluated as it is.",
                main_process_only=True,
            )

    starting_epoch, steps_into_epoch = divmod(completed_steps, steps_per_epoch)
    skip_batches = steps_into_epoch * args.gradient_accumulation_steps
    progress = tqdm(
        total=max_train_steps, initial=completed_steps, desc="pre-training", disable=not accelerator.is_main_process
    )
    logger.info(
        f"{len(data.train)} training rows, {accelerator.num_processes} process(es) x batch "
        f"{args.per_device_train_batch_size} x accumulation {args.gradient_accumulation_steps}, "
        f"{max_train_steps} steps",
        main_process_only=True,
    )
    started = time.perf_counter()
    timer = StepTimer()
    local_terms = None
    model.train()
    # A run resumed at its last step trains nothing (the loop below would take one step before its first check).
    for epoch in range(starting_epoch, num_epochs if completed_steps < max_train_steps else 0):
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == starting_epoch and skip_batches:
            batches = accelerator.skip_first_batches(train_dataloader, skip_batches)
        for batch in timer.batches(batches):
            collator.take_report(batch)
            if len(batch) == 0:  # every row of the batch was unreadable (already counted in the report)
                if accelerator.num_processes > 1:
                    raise RuntimeError(
                        "Every row of a training batch was unreadable on one process, so the processes can no "
                        "longer step together. The data changed after loading (see the skipped-rows report); "
                        "fix or remove those rows and resume with --resume_from_checkpoint latest."
                    )
                continue
            with accelerator.accumulate(model):
                # GradCache: the loss of the whole batch now, the weight gradients after the finiteness check.
                outputs = model(**batch, return_loss=True) if grad_cache is None else grad_cache.forward(batch)
                local_terms = _local_loss_terms(accelerator, outputs, local_terms)
                if accelerator.sync_gradients:  # the micro-batch whose optimizer.step() changes the weights
                    loss_terms, local_terms = accelerator.gather(local_terms[None]).cpu(), None
                    _refuse_non_finite_loss(loss_terms, completed_steps + 1, args)
                if grad_cache is None:
                    accelerator.backward(outputs.loss)
                else:
                    grad_cache.backward()
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    accelerator.unwrap_model(model).clamp_logit_scale()
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            asked = None  # once a callback is called at this step: whether one asked to stop
            timer.step_done()

            if completed_steps % args.logging_steps == 0 or completed_steps == max_train_steps:
                row = _loss_row(accelerator, model, outputs, loss_terms, completed_steps, scheduler.get_last_lr()[0])
                row.update(timer.window_means())
                history.append(row)
                progress.set_postfix(loss=f"{row['loss']:.3f}", data_s=f"{row['data_seconds']:.3f}",
                                     compute_s=f"{row['compute_seconds']:.3f}")
                accelerator.log(row, step=completed_steps)
                if callbacks:
                    asked = call_hooks(callbacks, accelerator, "on_log", completed_steps, dict(row))

            if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_train_steps:
                evaluations.append(
                    _validate(accelerator, model, processor, data, args, completed_steps, image_features)
                )
                if callbacks:
                    unwrapped = accelerator.unwrap_model(model)  # still in eval mode
                    asked = call_hooks(callbacks, accelerator, "on_evaluate", completed_steps, dict(evaluations[-1]),
                                       unwrapped) or bool(asked)
                model.train()
                timer.restart()

            if asked is not None and stop_requested(accelerator, asked):
                stopped = True
                logger.info(f"A callback stopped the run at step {completed_steps} of {max_train_steps}.",
                            main_process_only=True)

            if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
                _save_checkpoint(accelerator, processor, checkpoint_dir, completed_steps, history, evaluations, args)
                timer.restart()

            if completed_steps >= max_train_steps or stopped:
                break
        if completed_steps >= max_train_steps or stopped:
            break
    progress.close()
    train_seconds = time.perf_counter() - started

    # Rows dropped while loading are the same on every process; rows dropped by the collator are not.
    skipped = collator.skipped_rows.gather(accelerator)
    if data.skipped is not None:
        skipped = SkippedRows(list(data.skipped)).extend(skipped)
    accelerator.wait_for_everyone()
    results = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        # Saved before the evaluation, which reads the test images for the first time and can fail on one of them.
        with explained_save_failure("the trained model", args.output_dir, checkpoint_dir):
            _save_model(unwrapped, processor, data, args)
        results = _final_evaluation(unwrapped, processor, data, args, image_features)
        results["train_seconds"] = round(train_seconds, 1)
        results["steps"] = completed_steps
        results["step_time"] = timer.run_means()
        results["skipped_rows"] = skipped.summary()
        skipped.log()
        if negatives:
            results["unknown_negatives"] = collator.unknown_negatives
            if collator.unknown_negatives:
                logger.warning(
                    f"{collator.unknown_negatives} mined negatives were left out: their product ids are not among "
                    "the training products (another split's products, or rows skipped as bad).", main_process_only=True
                )
        _write_outputs(unwrapped, data, args, results, history, evaluations)
        call_hooks(callbacks, accelerator, "on_train_end", completed_steps, results, unwrapped)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _multi_process_without_gpu() -> bool:
    """`accelerate launch --multi_gpu --num_processes N` on a machine without GPUs: run N CPU processes over
    gloo. Accelerate would otherwise give each process a world of its own."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def cpu_threads(requested: int | None, num_processes: int) -> int:
    """The torch threads a CPU run uses: `requested` (--num_cpu_threads) if given; every physical core for a single
    process that `accelerate launch` started without --cpu, since accelerate then sets OMP_NUM_THREADS=1 as it does
    for a GPU run, not as a choice (with --cpu or a config it computes a count itself); otherwise torch's own."""
    if requested is not None:
        return requested
    launched_for_gpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "false"
    if num_processes == 1 and launched_for_gpu and os.environ.get("OMP_NUM_THREADS") == "1":
        physical = psutil.cpu_count(logical=False) or 1
        return max(1, min(physical, len(os.sched_getaffinity(0))))
    return torch.get_num_threads()


def _warmup_steps(args: PretrainArguments, max_train_steps: int) -> int:
    """`--warmup_steps`, or a tenth of the run when the warm-up is not shorter than the run: the learning rate
    would otherwise never reach its peak, --learning_rate."""
    if args.warmup_steps < max_train_steps:
        return args.warmup_steps
    capped = max_train_steps // 10
    logger.warning(
        f"--warmup_steps {args.warmup_steps} is not shorter than the run's {max_train_steps} steps, so the learning "
        f"rate would never reach --learning_rate; warming up for {capped} steps (a tenth of the run) instead. "
        "Pass a smaller --warmup_steps to choose.",
        main_process_only=True,
    )
    return capped


def _tracker_config(args: PretrainArguments) -> dict:
    """Trackers accept scalars only; lists and None become strings."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


def _local_loss_terms(accelerator, outputs, previous: torch.Tensor | None) -> torch.Tensor:
    """This process's loss terms, as one vector on its device: the values of this micro-batch (NaN where a term is
    absent), then 1 where a term is present, then 1 where a term was not finite in this or an earlier micro-batch of
    the same optimiser step (`previous`).

    Gathered once per optimiser step, the vector serves both the finiteness check and the logged means. Its size is
    fixed because a term can be absent on one process (no covering query-keyword pair in its rows) and present on
    another, and a per-term collective would then hang.
    """
    values = [getattr(outputs, term, None) for term in LOSS_TERMS]
    absent = torch.tensor(float("nan"), device=accelerator.device)
    value = torch.stack([absent if v is None else v.detach().float().reshape(()) for v in values])
    present = torch.tensor([float(v is not None) for v in values], device=accelerator.device)
    non_finite = ((present > 0) & ~torch.isfinite(value)).float()
    if previous is not None:
        non_finite = torch.maximum(non_finite, previous[2 * len(LOSS_TERMS) :])
    return torch.cat([value, present, non_finite])


def _refuse_non_finite_loss(loss_terms: torch.Tensor, step: int, args: PretrainArguments) -> None:
    """Raise before the optimiser step if a loss term of any micro-batch of this step is NaN or infinite on any
    process (`loss_terms`: every process's `_local_loss_terms`).

    Every process sees the same gathered terms, so all of them stop together (one stopping alone would leave the
    others waiting in the next collective), and no parameter has changed: the optimiser never sees the step.
    """
    non_finite = loss_terms[:, 2 * len(LOSS_TERMS) :] > 0
    if not non_finite.any():
        return
    terms = [LOSS_TERMS[i] for i in non_finite.any(0).nonzero()[:, 0].tolist()]
    processes = non_finite.any(1).nonzero()[:, 0].tolist()
    raise FloatingPointError(
        f"Step {step}: the loss is not finite ({', '.join(terms)}, on process(es) {processes}), so the step is "
        "refused before any weight changes. The usual cause is a NaN or infinite value in this step's inputs (an "
        "image's pixels, or a cached image feature); otherwise training diverged: lower --learning_rate (now "
        f"{args.learning_rate}) or --max_grad_norm. Fix or drop the bad rows, then resume with "
        "--resume_from_checkpoint latest (checkpoints are written with --checkpointing_steps)."
    )


def _loss_row(accelerator, model, outputs, loss_terms: torch.Tensor, step: int, learning_rate: float) -> dict:
    """Every loss term of this step (from the gathered `_local_loss_terms`), averaged over processes, plus the
    temperature and learning rate."""
    row = {"step": step, "lr": learning_rate}
    means = torch.nanmean(loss_terms[:, : len(LOSS_TERMS)], dim=0)
    row.update({term: mean.item() for term, mean in zip(LOSS_TERMS, means) if not torch.isnan(mean)})
    row["logit_scale"] = accelerator.unwrap_model(model).logit_scale.detach().exp().item()
    if getattr(outputs, "masked_negatives", None) is not None:
        row["masked_negatives"] = float(outputs.masked_negatives)
    return row


def _locked_image_features(args, model, processor, data, accelerator):
    """With `--lock_image_tower`: freeze the tower and return its feature cache, filled with the training images
    (by the main process first; the others then read its shards). Without it: None."""
    if not args.lock_image_tower:
        return None
    from ..image_feature_cache import ImageFeatureCache, keep_images_encoded

    model.lock_image_tower()
    for split in ("train", "validation_products", "test_products"):
        setattr(data, split, keep_images_encoded(getattr(data, split)))
    directory = args.image_feature_cache or os.path.join(args.output_dir, "image_features")
    with accelerator.main_process_first():
        cache = ImageFeatureCache(directory, model, processor, batch_size=args.eval_batch_size)
        added = cache.fill(data.train["image"], show_progress=accelerator.is_main_process)
    logger.info(f"Image feature cache {cache.directory}: {len(cache)} images ({added} new).", main_process_only=True)
    return cache


def _validate(accelerator, model, processor, data, args, step, image_features=None) -> dict:
    """Recall@K on the validation split (title + image) and the mean image weight per category."""
    summary = {"step": step}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        result = evaluate_retrieval(
            unwrapped,
            processor,
            data.validation_products,
            data.validation_queries,
            conditions=("title+image",),
            batch_size=args.eval_batch_size,
            max_queries=args.max_eval_queries,
            show_progress=False,
            image_features=image_features,
        )
        overall = result["title+image"]["overall"]
        summary.update({k: v for k, v in overall.items() if k.startswith(("recall@", "mrr@", "ndcg@"))})
        summary["image_weight_by_category"] = result.get("image_weight_by_category", {})
        groups = result.get("image_weight_by_category_group", {})
        summary["image_weight_by_category_group"] = groups
        scalars = {f"validation/{k}": v for k, v in summary.items() if isinstance(v, float)}
        scalars.update({f"validation/image_weight/{k}": v for k, v in summary["image_weight_by_category"].items()})
        accelerator.log(scalars, step=step)
        weights = ", ".join(f"{group} {weight:.2f}" for group, weight in groups.items())
        logger.info(
            f"step {step}: validation recall@10 {summary.get('recall@10', float('nan')):.3f}"
            + (f"; mean image weight {weights}" if weights else ""),
            main_process_only=True,
        )
    accelerator.wait_for_everyone()
    return summary


def _save_checkpoint(accelerator, processor, checkpoint_dir, step, history, evaluations, args) -> None:
    staging = staging_path(checkpoint_dir, step)
    with explained_save_failure(f"the checkpoint of step {step}", checkpoint_dir, checkpoint_dir, cleanup=staging):
        accelerator.save_state(staging)
        if accelerator.is_main_process:
            processor.save_pretrained(os.path.join(staging, "processor"))
            # Written last: a folder without it is an interrupted save and is never resumed from.
            write_json(
                os.path.join(staging, "trainer_state.json"),
                {"step": step, "history": history, "evaluations": evaluations, "args": _tracker_config(args)},
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_checkpoint(checkpoint_dir, step)
        prune_checkpoints(checkpoint_dir, args.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def _final_evaluation(model, processor, data, args, image_features=None) -> dict:
    """The test split under the three conditions, with buckets, category groups and modal weights.

    A failure (typically an unreadable test image, which nothing reads before this point) is re-raised saying that
    the trained model is saved and how to evaluate it once the catalogue is fixed.
    """
    try:
        return evaluate_retrieval(
            model,
            processor,
            data.test_products,
            data.test_queries,
            conditions=("title+image", "title", "image"),
            batch_size=args.eval_batch_size,
            show_progress=True,
            image_features=image_features,
            return_per_query=args.per_query_results,
        )
    except Exception as error:
        raise RuntimeError(
            f"The final evaluation on the test split of {data.name!r} failed: {error} The trained model, processor "
            f"and model card (without results) are saved in {args.output_dir!r}; fix or drop that test row, then "
            f"evaluate the saved model with `python examples/evaluate_retrieval.py --model {args.output_dir}`."
        ) from error


def _model_card(model, data, args, results):
    from ..modelcard import generate_model_card

    preset = None if args.model.endswith(".json") or os.path.isdir(args.model) else args.model
    return generate_model_card(
        model.config,
        results,
        model_id=args.hub_model_id,
        preset=preset,
        dataset_name=data.name,
        training_args=vars(args),
        num_parameters=model.num_parameters(),
        repo_id=args.hub_model_id or args.output_dir,
        training_command=_launch_command(args),
    )


def _launch_command(args: PretrainArguments) -> str:
    """The `accelerate launch` command of this run: every argument that differs from its default."""
    parts = ["accelerate launch examples/pretrain.py"]
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if value == field.default or field.name in ("push_to_hub", "hub_model_id", "hub_private"):
            continue
        if field.name == "output_dir" and value == default_output_dir(args.model, args.dataset):
            continue
        if field.name == "max_train_steps" and value == DEFAULT_MAX_TRAIN_STEPS and args.num_train_epochs is None:
            continue  # the length of a run given neither, set by PretrainArguments itself
        if isinstance(value, bool):
            parts.append(f"--{field.name}" if value else f"--{field.name} False")
        else:
            parts.append(f"--{field.name} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return " \\\n    ".join(parts)


def _save_model(model, processor, data, args) -> None:
    """Model, processor, a card without results and the evaluation sets (for `make-hf evaluate --model
    OUTPUT_DIR` to score the run again), written together into `output_dir` (staged, then moved)."""
    from ..evaluation_sets import EVALUATION_SETS_FOLDER, save_evaluation_sets
    from .sources import EVALUATION_SPLITS

    card = _model_card(model, data, args, None)
    with staged_directory(args.output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(os.path.join(staging, "README.md"))
        save_evaluation_sets(os.path.join(staging, EVALUATION_SETS_FOLDER),
                             {split: getattr(data, split) for split in EVALUATION_SPLITS})


def _write_outputs(model, data, args, results, history, evaluations) -> None:
    """The card with the results, evaluation table and plots, each written atomically into `output_dir`."""
    card = _model_card(model, data, args, results)
    with atomic_path(os.path.join(args.output_dir, "README.md")) as tmp:
        card.save(tmp)
    write_json(os.path.join(args.output_dir, "eval_results.json"), results)
    table = f"## {args.model} on {data.name} (test split)\n\n" + format_results(results)
    write_text(os.path.join(args.output_dir, "eval_results.md"), table + "\n")
    write_json(os.path.join(args.output_dir, "training_history.json"), {"losses": history, "validation": evaluations})
    plot_losses(history, os.path.join(args.output_dir, "loss_curves.png"))
    final = {"step": results.get("steps", 0), **results["title+image"]["overall"]}
    plot_recall(evaluations, os.path.join(args.output_dir, "recall_at_k.png"), test=final)
    print(table)
    if args.push_to_hub:
        from ..hub import push_to_hub

        # The model-repository allow-list of make_hf.hub: checkpoints/ and the other run files stay local.
        url = push_to_hub(args.output_dir, args.hub_model_id, private=args.hub_private)
        print(f"Pushed to {url}")


__all__ = ["pretrain", "LOSS_TERMS"]
