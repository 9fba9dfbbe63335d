"""GradCache gives the gradients of the full-batch loss: in one process, in two gloo processes, with dropout,
activation checkpointing and cached image features; and `pretrain()` trains with it."""

import datetime
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from make_hf import MakeConfig, MakeModel
from make_hf.training import PretrainArguments, pretrain
from make_hf.training.gradcache import EMBEDDING_FIELDS, GradCache
from model_inputs import random_batch, single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)
from test_distributed import SPLITS, WORLD_SIZE, _free_port, _global_batch, _gradients, _local_batch

TOLERANCE = 1e-5


def chunkwise_loss(model, batch, chunk_size):
    """The full-batch loss backpropagated through one graph: the batch encoded `chunk_size` rows at a time (so that
    dropout draws what GradCache's chunks draw), its embeddings concatenated, the loss computed on all of them."""
    size = batch["query_input_ids"].shape[0]
    pieces = []
    for start in range(0, size, chunk_size):
        output = model(**{key: value[start : start + chunk_size] for key, value in batch.items()}, return_loss=False)
        pieces.append([getattr(output, name) for name in EMBEDDING_FIELDS])
    embeds = {
        name: None if column[0] is None else torch.cat(column) for name, column in zip(EMBEDDING_FIELDS, zip(*pieces))
    }
    losses = model.loss_from_embeddings(
        embeds, model.modality_masks(**batch), batch["query_term_ids"], batch["keyword_term_ids"], batch["product_ids"]
    )
    return losses.loss


def gradcache_step(model, batch, chunk_size):
    grad_cache = GradCache(model, chunk_size)
    output = grad_cache.forward(batch)
    assert all(parameter.grad is None for parameter in model.parameters())  # nothing before backward()
    grad_cache.backward()
    return output


def max_difference(actual, expected):
    assert actual.keys() == expected.keys()
    return max((actual[name] - gradient).abs().max().item() for name, gradient in expected.items())


def trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_dropout_is_on_in_these_tests():
    torch.manual_seed(0)
    model = MakeModel(tiny_config("make-fn-mask")).train()
    batch = random_batch(model.config)
    first, second = (model(**batch, return_loss=False).query_embeds for _ in range(2))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("chunk_size", [1, 4, 6])
def test_gradients_equal_full_batch_gradients_with_dropout(chunk_size):
    torch.manual_seed(0)
    model = MakeModel(tiny_config("make-fn-mask")).train()
    batch = random_batch(model.config, batch_size=6, seed=1)
    batch["product_ids"][4] = batch["product_ids"][2]  # a multi-positive pair across chunks

    torch.manual_seed(5)
    expected_loss = chunkwise_loss(model, batch, chunk_size)
    expected_loss.backward()
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(5)
    output = gradcache_step(model, batch, chunk_size)
    assert set(expected) == trainable(model)
    assert max_difference(_gradients(model), expected) <= TOLERANCE
    torch.testing.assert_close(output.loss, expected_loss.detach(), rtol=0, atol=1e-6)
    for name in ("query_product_loss", "title_image_loss", "keyword_title_loss", "query_keyword_loss"):
        assert getattr(output, name) is not None
    assert output.masked_negatives is not None and output.query_embeds.shape == (6, model.config.projection_dim)


def test_gradients_equal_those_of_one_forward_over_the_whole_batch_without_dropout():
    torch.manual_seed(0)
    model = MakeModel(tiny_config("make-tiny")).eval()
    batch = random_batch(model.config, batch_size=7, seed=2)
    output = model(**batch)
    output.loss.backward()
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)

    cached = gradcache_step(model, batch, chunk_size=3)  # chunks of 3, 3 and 1 rows
    assert max_difference(_gradients(model), expected) <= TOLERANCE
    for name in ("loss", "query_product_loss", "query_keyword_loss", "logits_per_query", "modal_weights"):
        torch.testing.assert_close(getattr(cached, name), getattr(output, name).detach(), rtol=1e-5, atol=1e-6)


def test_with_activation_checkpointing_and_cached_image_features():
    torch.manual_seed(0)
    model = MakeModel(tiny_config("make-tiny")).lock_image_tower().train()
    model.activation_checkpointing_enable()
    batch = random_batch(model.config, batch_size=6, seed=3)
    with torch.no_grad():
        batch["image_features"] = model.get_image_features(batch.pop("pixel_values"), project=False)

    torch.manual_seed(7)
    chunkwise_loss(model, batch, 4).backward()
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(7)
    gradcache_step(model, batch, 4)
    assert not any(name.startswith("vision_model.") for name in expected)
    assert set(expected) == trainable(model)
    assert max_difference(_gradients(model), expected) <= TOLERANCE


def test_bad_use_is_refused():
    model = MakeModel(tiny_config("make-tiny"))
    with pytest.raises(ValueError, match="gradcache_chunk_size"):
        GradCache(model, 0)
    grad_cache = GradCache(model, 2)
    with pytest.raises(RuntimeError, match="needs a GradCache.forward"):
        grad_cache.backward()
    batch = random_batch(model.config, batch_size=4)
    with pytest.raises(ValueError, match="no loss term"):
        grad_cache.forward({key: batch[key] for key in ("query_input_ids", "query_attention_mask")})
    with pytest.raises(ValueError, match="--gradcache_chunk_size"):
        PretrainArguments(gradcache_chunk_size=0)


CHUNK_SIZE = 2


def _worker(rank, port, config_dict, state_path, result_path):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120))
    try:
        config = MakeConfig(**config_dict)
        reference, model = MakeModel(config), MakeModel(config)
        reference.load_state_dict(torch.load(state_path))
        model.load_state_dict(torch.load(state_path))
        wrapped = DistributedDataParallel(model)
        batch = _global_batch(config)
        results = []
        for split in SPLITS:
            local = _local_batch(batch, split[rank], split[2] if rank == 1 else 0)
            # Dropout on: the chunk-wise full-batch loss in one graph, gradients averaged over processes as DDP does.
            reference.train()
            model.train()
            reference.zero_grad(set_to_none=True)
            torch.manual_seed(11 + rank)
            chunkwise_loss(reference, local, CHUNK_SIZE).backward()
            expected = _gradients(reference)
            for gradient in expected.values():
                dist.all_reduce(gradient)
                gradient /= WORLD_SIZE
            model.zero_grad(set_to_none=True)
            torch.manual_seed(11 + rank)
            gradcache_step(wrapped, local, CHUNK_SIZE)
            with_dropout = max_difference(_gradients(model), expected)
            complete = set(expected) == trainable(model)
            # Dropout off: compared with one process on the concatenated batch by the test.
            model.eval()
            model.zero_grad(set_to_none=True)
            output = gradcache_step(wrapped, local, CHUNK_SIZE)
            loss = output.loss.clone()
            dist.all_reduce(loss)
            results.append(
                {
                    "with_dropout": with_dropout,
                    "complete": complete,
                    "gradients": _gradients(model),
                    "mean_loss": loss / WORLD_SIZE,
                    "logits_shape": tuple(output.logits_per_query.shape),
                }
            )
        if rank == 0:
            torch.save(results, result_path)
    finally:
        dist.destroy_process_group()


def test_two_processes_take_negatives_from_the_global_batch(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("make-fn-mask")
    model = MakeModel(config).eval()
    state_path, result_path = tmp_path / "state.pt", tmp_path / "result.pt"
    torch.save(model.state_dict(), state_path)

    context = mp.get_context("spawn")
    args = (_free_port(), config.to_dict(), str(state_path), str(result_path))
    processes = [context.Process(target=_worker, args=(rank, *args)) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    for process in processes:
        if process.is_alive():
            process.terminate()
    assert [process.exitcode for process in processes] == [0, 0]

    batch = _global_batch(config)
    output = model(**batch)
    output.loss.backward()
    expected = _gradients(model)
    for (rows_0, _, _), result in zip(SPLITS, torch.load(result_path)):
        assert result["complete"]
        assert result["with_dropout"] <= TOLERANCE
        assert result["logits_shape"] == (len(rows_0), 8)
        torch.testing.assert_close(result["mean_loss"], output.loss.detach(), rtol=1e-5, atol=1e-6)
        assert max_difference(result["gradients"], expected) <= TOLERANCE


def test_pretrain_with_gradcache_trains(tmp_path):
    """With accumulation, activation checkpointing and the locked image tower's feature cache too."""
    out = str(tmp_path / "run")
    results = pretrain(
        PretrainArguments(
            output_dir=out,
            model="make-tiny",
            synthetic_products=96,
            per_device_train_batch_size=16,
            gradcache_chunk_size=6,
            gradient_accumulation_steps=2,
            activation_checkpointing=True,
            lock_image_tower=True,
            max_train_steps=12,
            learning_rate=2e-3,
            warmup_steps=1,
            eval_steps=0,
            logging_steps=1,
            eval_batch_size=64,
            report_to="none",
        )
    )
    assert results["steps"] == 12
    with open(os.path.join(out, "training_history.json"), encoding="utf-8") as f:
        losses = [row["loss"] for row in json.load(f)["losses"]]
    assert len(losses) == 12 and all(map(lambda value: value == value, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
