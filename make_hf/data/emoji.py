"""Emoji-CLDR-3D: a small real text-to-multimodal retrieval benchmark built from two MIT-licensed npm packages.

Every emoji is a product: its title is the Unicode CLDR short name ("man rowing boat"), its image the Microsoft
Fluent 3D render, and its queries are its CLDR keywords that the name does not contain ("canoe", "oar",
"paddle"; not "boat" or "row", substrings of the name). The keywords are written by CLDR annotators, not
derived from the name, so the query vocabulary differs from the title vocabulary the way a shopper's differs
from a seller's, and the image often carries what the name leaves out. English and Chinese annotations are
joined by code point to the same renders.

Sources (`npm pack NAME@VERSION`, unmodified):

- `emojibase-data` 17.0.0 (MIT, data derived from Unicode CLDR): `package/<locale>/data.json` gives per emoji
  `hexcode`, `label` (CLDR short name), `tags` (CLDR keywords), `group`, `subgroup`; `package/en/messages.json`
  names the groups and subgroups.
- `@lobehub/fluent-emoji-3d` 1.1.0 (MIT, Microsoft Fluent Emoji): `package/assets/<hexcode>.webp`, 256x256 RGBA.

Built as follows: base emoji only (skin-tone variants are left out), the `component` group left out (skin tones
and hair styles are not products), joined on the lower-case hexcode with every `fe0f` part removed on both sides;
1,852 emoji have a render. Renders are downscaled to `image_size` (128 px by default, WebP quality 90, alpha
kept) to keep the set small (~6 MB) and fast to decode. The split is by CLDR subgroup, never at random: "man
rowing boat" and "woman rowing boat" share keywords and nearly share a picture, so a random split would leak.
Subgroups are shuffled by seed and each goes to the split furthest below its target share of emoji.

Layout (a `datasets.DatasetDict`; the same layout as the synthetic shop):

- `train`: one row per (training emoji, language, keyword not contained in the name): `query`, `title`,
  `image`, `product_id`, `category` (subgroup), `group`, `language`;
- `validation_products` / `test_products`: `product_id`, `title`, `image`, `category`, `group`, `emoji`,
  `language` (one row per emoji and language; `product_id` is the normalised hexcode, the same in every language);
- `validation_queries` / `test_queries`: `query`, `relevant_ids`, `language`. A query is a keyword that is not
  contained in the name of at least one emoji of the split; its relevant products are all emoji of the split
  (same language) that have the keyword, since a keyword shared by several emoji describes all of them.

Evaluate one language at a time: with several languages, product ids repeat across languages in the products
tables, so filter both tables by `language` first (or build with `languages="en"`).

Counts with the defaults (`languages=("en", "zh")`, `split_fractions=(0.8, 0.1, 0.1)`, `seed=0`), checked by the
test suite:

| split | subgroups | emoji | en | zh |
|---|---|---|---|---|
| train | 78 | 1,464 (1,449 with a training row) | 4,997 rows | 4,857 rows |
| validation | 9 | 189 | 270 queries | 365 queries |
| test | 10 | 199 | 364 queries | 507 queries |

Building takes about 10-20 s on two CPU cores (decoding and re-encoding the renders); the result is cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

import datasets

from .evaluation_splits import HELD_OUT_SPLITS, products_split, queries_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball: what `npm pack name@version` writes, and its sha256."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


EMOJIBASE_DATA = NpmPackage(
    "emojibase-data", "17.0.0", "emojibase-data-17.0.0.tgz",
    "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a",
)
FLUENT_EMOJI_3D = NpmPackage(
    "@lobehub/fluent-emoji-3d", "1.1.0", "lobehub-fluent-emoji-3d-1.1.0.tgz",
    "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58",
)
PACKAGES = (EMOJIBASE_DATA, FLUENT_EMOJI_3D)

_EXCLUDED_GROUPS = frozenset({"component"})
# Bump when the built layout or content changes, so that stale caches are rebuilt.
_BUILD_VERSION = 1


def default_cache_dir() -> Path:
    """`$MAKE_HF_CACHE`, else `~/.cache/make_hf`: where fetched tarballs and built datasets are kept."""
    return Path(os.environ.get("MAKE_HF_CACHE", Path.home() / ".cache" / "make_hf")).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_emoji_tarballs(destination: str | os.PathLike | None = None, *, npm: str = "npm") -> Path:
    """Download the two pinned tarballs with `npm pack` into `destination` (if not already there) and verify them.

    Args:
        destination: folder for the tarballs; default `default_cache_dir() / "emoji-npm"`.
        npm: the npm executable.

    Returns:
        The folder holding `emojibase-data-17.0.0.tgz` and `lobehub-fluent-emoji-3d-1.1.0.tgz`.
    """
    folder = Path(destination) if destination is not None else default_cache_dir() / "emoji-npm"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [package for package in PACKAGES if not (folder / package.filename).is_file()]
    if missing:
        if shutil.which(npm) is None:
            raise RuntimeError(
                f"npm ({npm!r}) was not found, so the Emoji-CLDR-3D sources cannot be fetched. Install Node.js/npm, "
                f"or download {', '.join(p.spec for p in missing)} elsewhere with `npm pack` and pass the folder as "
                "`source_dir`."
            )
        specs = [package.spec for package in missing]
        logger.info("Fetching %s with npm pack into %s", " ".join(specs), folder)
        result = subprocess.run([npm, "pack", *specs], cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"`npm pack {' '.join(specs)}` failed with exit code {result.returncode} in {folder}:\n"
                f"{result.stderr.strip()}\nCheck network access to the npm registry, or pass a folder holding the "
                "tarballs as `source_dir`."
            )
    for package in PACKAGES:
        _verify(folder / package.filename, package)
    return folder


def _verify(path: Path, package: NpmPackage) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Emoji-CLDR-3D needs {package.spec} as `npm pack {package.spec}` writes it "
            f"({package.filename}); call `fetch_emoji_tarballs()` or pass `source_dir=None` to fetch it."
        )
    digest = _sha256(path)
    if digest != package.sha256:
        raise ValueError(
            f"{path} has sha256 {digest}, but {package.spec} has {package.sha256}. The documented counts hold only "
            "for the unmodified pinned tarball: replace the file, or pass `verify=False` to build from it anyway."
        )


def _normalise_hexcode(hexcode: str) -> str:
    return "-".join(part for part in hexcode.lower().split("-") if part != "fe0f")


def _read_emojibase(
    path: Path, languages: Sequence[str]
) -> tuple[dict[str, list[dict]], dict[int, str], dict[int, str]]:
    wanted = {f"package/{language}/data.json": language for language in languages}
    wanted["package/en/messages.json"] = "messages"
    found: dict[str, object] = {}
    with tarfile.open(path, "r:gz") as tar:
        locales = set()
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 3 and parts[2] == "data.json":
                locales.add(parts[1])
            if member.name in wanted:
                found[wanted[member.name]] = json.load(tar.extractfile(member))
    unknown = [language for language in languages if language not in found]
    if unknown:
        raise ValueError(
            f"languages={tuple(languages)}: {unknown} not in {EMOJIBASE_DATA.spec}. Available locales: "
            f"{', '.join(sorted(locales))}."
        )
    messages = found["messages"]
    groups = {group["order"]: group["key"] for group in messages["groups"]}
    subgroups = {subgroup["order"]: subgroup["key"] for subgroup in messages["subgroups"]}
    return {language: found[language] for language in languages}, groups, subgroups


def _read_renders(path: Path, hexcodes: set[str], image_size: int) -> dict[str, bytes]:
    """Downscaled WebP bytes of the renders whose normalised hexcode is in `hexcodes`, in one pass over the tarball."""
    sources: dict[str, tuple[str, bytes]] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = member.name
            if not (name.startswith("package/assets/") and name.endswith(".webp")):
                continue
            key = _normalise_hexcode(name.rsplit("/", 1)[1][: -len(".webp")])
            # Two renders exist with and without fe0f; they are the same picture, keep the shorter name.
            if key in hexcodes and (key not in sources or len(name) < len(sources[key][0])):
                sources[key] = (name, tar.extractfile(member).read())
    renders = {}
    for key, (name, data) in sources.items():
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.width != image_size or image.height != image_size:
            factor = image.width // image_size
            if factor * image_size == image.width == image.height:
                image = image.reduce(factor)
            else:
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=90, method=2)
        renders[key] = buffer.getvalue()
    return renders


def _split_subgroups(
    subgroup_sizes: dict[str, int], fractions: Sequence[float], seed: int
) -> dict[str, str]:
    order = sorted(subgroup_sizes)
    random.Random(f"make-hf-emoji-split-{seed}").shuffle(order)
    total = sum(subgroup_sizes.values())
    names = ("train", "validation", "test")
    targets = {name: fraction * total for name, fraction in zip(names, fractions)}
    counts = dict.fromkeys(names, 0)
    assignment = {}
    for subgroup in order:
        split = max(names, key=lambda name: (targets[name] - counts[name]) / max(targets[name], 1e-9))
        assignment[subgroup] = split
        counts[split] += subgroup_sizes[subgroup]
    return assignment


def _queries_of(title: str, keywords: Sequence[str]) -> list[str]:
    """The keywords not contained in the (lower-cased) name, in CLDR order, without duplicates.

    Keywords without a letter ("%", "&", "1234" for the input-symbol emoji) are left out: they are symbols to
    type, not words to search with.
    """
    name = title.lower()
    queries: dict[str, None] = {}
    for keyword in keywords:
        keyword = keyword.strip().lower()
        if keyword and keyword not in name and any(ch.isalpha() for ch in keyword):
            queries[keyword] = None
    return list(queries)


def _build(source_dir: Path, languages: Sequence[str], image_size: int, fractions: Sequence[float],
           seed: int) -> datasets.DatasetDict:
    annotations, groups, subgroups = _read_emojibase(source_dir / EMOJIBASE_DATA.filename, languages)
    by_language = {
        language: {_normalise_hexcode(e["hexcode"]): e for e in entries if "group" in e}
        for language, entries in annotations.items()
    }
    base = sorted(by_language[languages[0]].values(), key=lambda e: (e.get("order", 0), e["hexcode"]))
    candidates = [e for e in base if groups[e["group"]] not in _EXCLUDED_GROUPS]
    renders = _read_renders(source_dir / FLUENT_EMOJI_3D.filename,
                            {_normalise_hexcode(e["hexcode"]) for e in candidates}, image_size)
    emoji = [e for e in candidates if _normalise_hexcode(e["hexcode"]) in renders]

    sizes: dict[str, int] = {}
    for e in emoji:
        sizes[subgroups[e["subgroup"]]] = sizes.get(subgroups[e["subgroup"]], 0) + 1
    assignment = _split_subgroups(sizes, fractions, seed)

    text = datasets.Value("string")
    train_features = datasets.Features({"query": text, "title": text, "image": datasets.Image(), "product_id": text,
                                        "category": text, "group": text, "language": text})
    product_features = datasets.Features({"product_id": text, "title": text, "image": datasets.Image(),
                                          "category": text, "group": text, "emoji": text, "language": text})
    query_features = datasets.Features({"query": text, "relevant_ids": datasets.List(text), "language": text})
    train = {name: [] for name in train_features}
    products = {split: {name: [] for name in product_features} for split in HELD_OUT_SPLITS}
    queries = {split: {name: [] for name in query_features} for split in HELD_OUT_SPLITS}
    relevant: dict[str, dict[str, dict[str, list[str]]]] = {
        split: {language: {} for language in languages} for split in HELD_OUT_SPLITS
    }
    for language in languages:
        for e in emoji:
            product_id = _normalise_hexcode(e["hexcode"])
            annotation = by_language[language].get(product_id)
            if annotation is None or not annotation.get("label"):
                continue
            title = annotation["label"]
            split = assignment[subgroups[e["subgroup"]]]
            image = {"bytes": renders[product_id], "path": None}
            category, group = subgroups[e["subgroup"]], groups[e["group"]]
            if split == "train":
                for query in _queries_of(title, annotation.get("tags", [])):
                    for name, value in zip(train_features, (query, title, image, product_id, category, group,
                                                            language)):
                        train[name].append(value)
                continue
            for name, value in zip(product_features, (product_id, title, image, category, group, e["emoji"],
                                                      language)):
                products[split][name].append(value)
            # Queries come from keywords outside the name; relevance from every keyword, name or not.
            keywords = {k.strip().lower() for k in annotation.get("tags", []) if k.strip()}
            table = relevant[split][language]
            for keyword in sorted(keywords):
                table.setdefault(keyword, [[], False])
                table[keyword][0].append(product_id)
            for query in _queries_of(title, annotation.get("tags", [])):
                table[query][1] = True
    for split in HELD_OUT_SPLITS:
        for language in languages:
            for keyword, (ids, is_query) in sorted(relevant[split][language].items()):
                if is_query:
                    queries[split]["query"].append(keyword)
                    queries[split]["relevant_ids"].append(ids)
                    queries[split]["language"].append(language)

    description = (f"Emoji-CLDR-3D ({EMOJIBASE_DATA.spec} + {FLUENT_EMOJI_3D.spec}), languages={list(languages)}, "
                   f"image_size={image_size}, seed={seed}; split by CLDR subgroup")

    def make(columns: dict, features: datasets.Features, what: str) -> datasets.Dataset:
        info = datasets.DatasetInfo(description=f"{description}: {what}", features=features,
                                    license="MIT (emojibase-data: Unicode CLDR; Microsoft Fluent Emoji)")
        return datasets.Dataset.from_dict(columns, features=features, info=info)

    result = {"train": make(train, train_features, "training rows")}
    for split in HELD_OUT_SPLITS:
        result[products_split(split)] = make(products[split], product_features, f"{split} products")
        result[queries_split(split)] = make(queries[split], query_features, f"{split} queries")
    return datasets.DatasetDict(result)


def _column(dataset: datasets.Dataset, name: str) -> list:
    return dataset.with_format("arrow")[name].to_pylist()


def describe_emoji_cldr_3d(dataset: datasets.DatasetDict) -> str:
    """A table of the set's size: subgroups and emoji per split, training rows and queries per language.

    Training emoji are counted when they have at least one training row (a keyword outside their name).
    """
    train_languages = _column(dataset["train"], "language")
    languages = sorted(set(train_languages) | set(_column(dataset["test_queries"], "language")))
    lines = [f"Emoji-CLDR-3D ({', '.join(languages)}), split by CLDR subgroup",
             f"{'split':<11}{'subgroups':>10}{'emoji':>7}" + "".join(f"{lang + ' rows/queries':>20}"
                                                                   for lang in languages)]
    rows = {lang: train_languages.count(lang) for lang in languages}
    lines.append(f"{'train':<11}{len(set(_column(dataset['train'], 'category'))):>10}"
                 f"{len(set(_column(dataset['train'], 'product_id'))):>7}"
                 + "".join(f"{str(rows[lang]) + ' rows':>20}" for lang in languages))
    for split in HELD_OUT_SPLITS:
        products, queries = dataset[products_split(split)], _column(dataset[queries_split(split)], "language")
        lines.append(f"{split:<11}{len(set(_column(products, 'category'))):>10}"
                     f"{len(set(_column(products, 'product_id'))):>7}"
                     + "".join(f"{str(queries.count(lang)) + ' queries':>20}" for lang in languages))
    return "\n".join(lines)


def build_emoji_cldr_3d(
    source_dir: str | os.PathLike | None = None,
    *,
    languages: str | Sequence[str] = ("en", "zh"),
    image_size: int = 128,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
    verbose: bool = True,
) -> datasets.DatasetDict:
    """Build (or load from the cache) the Emoji-CLDR-3D benchmark; see the module docstring for its layout.

    Args:
        source_dir: folder holding `emojibase-data-17.0.0.tgz` and `lobehub-fluent-emoji-3d-1.1.0.tgz`. When None,
            they are fetched with `npm pack` into `cache_dir / "emoji-npm"` (once).
        languages: emojibase locale(s), e.g. "en", "zh", "zh-hant", "ja". Every language uses the same renders.
        image_size: side of the stored renders in pixels (the sources are 256 px).
        split_fractions: target (train, validation, test) shares of emoji; whole subgroups go to one split.
        seed: shuffles the subgroups before they are assigned.
        cache_dir: where the built `DatasetDict` is saved and reloaded from (default `default_cache_dir()`);
            the cache key covers the tarballs' sha256 and every argument above.
        verify: check the tarballs' sha256 against the pinned versions.
        verbose: print the size table (`describe_emoji_cldr_3d`).
    """
    languages = (languages,) if isinstance(languages, str) else tuple(languages)
    if not languages:
        raise ValueError("languages is empty; pass at least one emojibase locale such as 'en'.")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions={tuple(split_fractions)} must be three non-negative numbers summing to 1.")
    if not 8 <= image_size <= 256:
        raise ValueError(f"image_size={image_size}: the renders are 256 px; choose a size between 8 and 256.")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source_dir is None:
        source = fetch_emoji_tarballs(cache_root / "emoji-npm")
    else:
        source = Path(source_dir)
        for package in PACKAGES:
            if verify:
                _verify(source / package.filename, package)
            elif not (source / package.filename).is_file():
                raise FileNotFoundError(f"source_dir={str(source)!r} holds no {package.filename}.")
    digests = [_sha256(source / package.filename) for package in PACKAGES]
    key = hashlib.sha256(
        json.dumps([_BUILD_VERSION, digests, languages, image_size, list(split_fractions), seed]).encode()
    ).hexdigest()[:16]
    target = cache_root / "emoji-cldr-3d" / key
    if (target / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(target))
    else:
        dataset = _build(source, languages, image_size, split_fractions, seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
        bars_were_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(str(staging))
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        try:
            staging.rename(target)
        except OSError:  # another process finished the same build first
            shutil.rmtree(staging, ignore_errors=True)
        dataset = datasets.load_from_disk(str(target))
    if verbose:
        print(describe_emoji_cldr_3d(dataset))
    return dataset


__all__ = [
    "EMOJIBASE_DATA",
    "FLUENT_EMOJI_3D",
    "NpmPackage",
    "build_emoji_cldr_3d",
    "default_cache_dir",
    "describe_emoji_cldr_3d",
    "fetch_emoji_tarballs",
]
