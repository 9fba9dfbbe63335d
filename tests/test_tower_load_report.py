"""A TEXT checkpoint initialises two towers but its transformers load report is printed once."""

import logging

from transformers import BertConfig, BertModel

from make_hf import train_tokenizer
from make_hf.training import PretrainArguments, pretrain


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_text_checkpoint_load_report_is_printed_once(tmp_path):
    text = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).save_pretrained(text)  # with a pooler, which MAKE leaves out: a load report
    train_tokenizer(["red shoe blue mug usb charger"] * 10, vocab_size=200, min_frequency=1).save_pretrained(text)
    records = _Records()
    logging.getLogger("transformers.modeling_utils").addHandler(records)
    try:
        pretrain(PretrainArguments(
            model="make-tiny", init_from_towers=[str(text)], synthetic_products=96, per_device_train_batch_size=8,
            max_train_steps=1, warmup_steps=0, eval_steps=0, output_dir=str(tmp_path / "run"),
        ))
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(records)
    assert sum("LOAD REPORT" in message for message in records.messages) == 1
