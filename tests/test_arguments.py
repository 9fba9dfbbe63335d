"""Parsed pre-training arguments: the default output folder follows the model and the data."""

import os

import pytest
from transformers import HfArgumentParser

from make_hf.training import PretrainArguments


def _parse(*argv):
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=list(argv))
    return args


@pytest.mark.parametrize("argv, output_dir", [
    ((), "outputs/make-small-synthetic"),  # the README's default run
    (("--model", "make-base", "--dataset", "data/my_logs.jsonl"), "outputs/make-base-my_logs"),
    (("--dataset", "emoji-en"), "outputs/make-small-emoji-en"),
    (("--model", "configs/mine.json", "--dataset", "shop/logs/"), "outputs/mine-logs"),
    (("--dataset", "data/my_logs.jsonl", "--output_dir", "elsewhere"), "elsewhere"),
])
def test_default_output_dir_names_the_model_and_the_dataset(argv, output_dir):
    assert _parse(*argv).output_dir == output_dir


def test_the_launch_command_of_the_default_run_has_no_arguments():
    from make_hf.training.trainer import _launch_command

    assert _launch_command(_parse()) == "accelerate launch examples/pretrain.py"
    assert _launch_command(_parse("--dataset", "a.csv")).endswith("--dataset a.csv")


def test_a_single_cpu_process_under_accelerate_launch_uses_every_physical_core(monkeypatch):
    """`accelerate launch` without --cpu sets OMP_NUM_THREADS=1, as for a GPU run; on a CPU-only machine that would
    train on one core. An explicit --num_cpu_threads, several processes or a plain `python` run are left alone."""
    import psutil
    import torch

    from make_hf.training.trainer import cpu_threads

    physical = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(None, num_processes=1) == physical
    assert cpu_threads(3, num_processes=1) == 3
    assert cpu_threads(None, num_processes=2) == torch.get_num_threads()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # --cpu: accelerate chose the count itself
    assert cpu_threads(None, num_processes=1) == torch.get_num_threads()
    monkeypatch.delenv("ACCELERATE_USE_CPU")  # `python examples/pretrain.py`: the user's OMP_NUM_THREADS holds
    assert cpu_threads(None, num_processes=1) == torch.get_num_threads()


def test_num_cpu_threads_below_one_is_refused():
    with pytest.raises(ValueError, match="--num_cpu_threads"):
        _parse("--num_cpu_threads", "0")
