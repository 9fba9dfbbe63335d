"""`import make_hf` and the `make-hf` parser load no torch; the Auto classes still know the `make` type as soon as a
config, model or processor module is imported, however it is imported. Each check runs in a fresh interpreter."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from make_hf import MakeConfig, MakeModel, MakeProcessor, cli, train_tokenizer
from make_hf.encoding import CONDITIONS
from make_hf.image_towers import EFFICIENTNET_LITE_VARIANTS
from make_hf.index import INDEX_KINDS

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def test_help_imports_no_torch():
    result = _python(
        """
        import contextlib, io, json, sys
        from make_hf.cli import build_parser, main

        commands = build_parser()._subparsers._group_actions[0].choices
        for argv in [["--help"]] + [[command, "--help"] for command in commands]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(argv)
        print(json.dumps({"commands": sorted(commands), "heavy": [name for name in ("torch", "transformers")
                                                                  if name in sys.modules]}))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert "search" in found["commands"] and "push" in found["commands"]
    assert found["heavy"] == [], f"`make-hf --help` imported {found['heavy']}"


def test_parser_choices_are_the_library_ones():
    assert cli._CONDITIONS == CONDITIONS
    assert cli._INDEX_KINDS == INDEX_KINDS
    assert cli._IMAGE_TOWER_VARIANTS == EFFICIENTNET_LITE_VARIANTS


def test_package_names_still_import():
    import make_hf

    assert make_hf.MakeModel is MakeModel and set(make_hf.__all__) <= set(dir(make_hf))
    assert all(getattr(make_hf, name) is not None for name in make_hf.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'MakeModle'"):
        make_hf.MakeModle  # noqa: B018


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    config = MakeConfig.from_preset("make-tiny")
    tokenizer = train_tokenizer(["red mug", "blue charger"] * 5, vocab_size=config.query_config.vocab_size,
                                min_frequency=1)
    MakeModel(config).save_pretrained(folder)
    MakeProcessor.from_config(config, tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "first_import",
    [
        "from make_hf.processing_make import MakeProcessor",  # a sub-module, no name of the package
        "from make_hf.configuration_make import MakeConfig",
        "import make_hf; make_hf.register_auto_classes()",
    ],
)
def test_auto_classes_know_make_after_any_import_of_its_classes(saved_model, first_import):
    result = _python(
        f"""
        import sys
        {first_import}
        from transformers import AutoConfig, AutoModel, AutoProcessor
        from make_hf.processing_make import MakeProcessor

        folder = sys.argv[1]
        MakeProcessor.from_pretrained(folder)  # its tokenizer loading reads config.json through AutoConfig
        print(type(AutoConfig.from_pretrained(folder)).__module__, type(AutoModel.from_pretrained(folder)).__module__,
              type(AutoProcessor.from_pretrained(folder)).__module__)
        """,
        str(saved_model),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stderr  # no trust_remote_code question
    assert result.stdout.split() == ["make_hf.configuration_make", "make_hf.modeling_make", "make_hf.processing_make"]
