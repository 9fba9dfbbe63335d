"""Two gloo processes give the gradients of one process on the concatenated batch (gathers with gradient)."""

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from make_hf import MakeConfig, MakeModel
from model_inputs import random_batch, single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


WORLD_SIZE = 2
# (rows of process 0, rows of process 1, extra zero columns on process 1's term ids)
SPLITS = [(range(0, 4), range(4, 8), 0), (range(0, 3), range(3, 8), 2)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_batch(config):
    batch = random_batch(config, batch_size=8, seed=3)
    # Product 42 appears on both processes: a positive pair that only the gathered batch can see.
    batch["product_ids"] = torch.tensor([42, 1, 2, 3, 4, 42, 5, 6])
    batch["title_attention_mask"][6] = 0
    batch["image_mask"][3] = 0
    return batch


def _local_batch(batch, rows, extra_term_columns):
    local = {key: value[list(rows)] for key, value in batch.items()}
    for key in ("query_term_ids", "keyword_term_ids"):
        local[key] = F.pad(local[key], (0, extra_term_columns))
    return local


def _gradients(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _worker(rank, port, config_dict, state_path, result_path):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120))
    try:
        config = MakeConfig(**config_dict)
        model = MakeModel(config)
        model.load_state_dict(torch.load(state_path))
        model.eval()  # no dropout: both runs must compute the same function
        batch = _global_batch(config)
        results = []
        for split in SPLITS:
            rows, extra = split[rank], split[2] if rank == 1 else 0
            model.zero_grad()
            output = model(**_local_batch(batch, rows, extra))
            output.loss.backward()
            gradients = _gradients(model)
            for gradient in gradients.values():
                # What DDP does: average the gradients over processes.
                dist.all_reduce(gradient)
                gradient /= WORLD_SIZE
            loss = output.loss.detach().clone()
            dist.all_reduce(loss)
            results.append(
                {
                    "gradients": gradients,
                    "mean_loss": loss / WORLD_SIZE,
                    "logits_shape": tuple(output.logits_per_query.shape),
                }
            )
        if rank == 0:
            torch.save(results, result_path)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
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
        process.join(timeout=240)
    for process in processes:
        if process.is_alive():
            process.terminate()
    assert [process.exitcode for process in processes] == [0, 0]

    batch = _global_batch(config)
    model.zero_grad()
    output = model(**batch)
    output.loss.backward()
    expected = _gradients(model)

    results = torch.load(result_path)
    for (rows_0, _, _), result in zip(SPLITS, results):
        assert result["logits_shape"] == (len(rows_0), 8)
        torch.testing.assert_close(result["mean_loss"], output.loss.detach(), rtol=1e-5, atol=1e-6)
        assert result["gradients"].keys() == expected.keys()
        max_difference = max((result["gradients"][name] - g).abs().max().item() for name, g in expected.items())
        assert max_difference <= 1e-5
