"""Parsed pre-training arguments: the default output folder follows the model and the data."""

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
