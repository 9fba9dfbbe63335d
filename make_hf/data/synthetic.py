"""The synthetic shop: a deterministic, download-free product search set on which each MAKE mechanism must matter.

`make_synthetic_shop(num_products=3200, seed=0)` returns a `datasets.DatasetDict` with

- `train`: training rows `query`, `title`, `image`, `product_id`, `category`, `category_group` (several queries
  per product; the same query string can point at several products, as in a search log);
- `validation_products` / `test_products`: the catalogue of that split (`product_id`, `title`, `image`,
  `category`, `category_group`, and the ground-truth attributes `colour`, `pattern`, `brand`, `material`,
  `size`);
- `validation_queries` / `test_queries`: `query`, `relevant_ids` (every product of the split that matches the
  query, often several), `bucket`, `category`, `category_group`.

Products are split train / validation / test (50 / 25 / 25 by default) by product and evenly across categories;
an evaluation split's queries are only judged against that split's products. The evaluation catalogues are
large on purpose: with 16 categories, a catalogue of 160 products has 10 per category, and Recall@10 would only
test whether the model knows the category. The default has 50 per category (800 per split), so the top 10 must
get colour, pattern, brand, material or size right. Images are small PNGs drawn with PIL (64 px by default),
built once and stored as encoded bytes; the whole default shop takes a few seconds to build.

What it is built to test
------------------------
Sixteen categories in two groups (`category_group`):

- **image_decided** (t-shirt, dress, sneakers, mug, cushion, umbrella, backpack, vase): products differ only in
  colour and pattern, which only the picture shows. Every title of the category states the same brand,
  material and size, plus, as sellers do, a list of 2-4 colours (and sometimes a pattern) they offer, drawn
  without looking at the product: a title names colours but never tells which one the pictured product has.
  Queries ask for colour and/or pattern ("red striped tee"), so only the image can rank the right products
  first, and a fixed title/image mix is misled by the colour words in titles. Modal Adaptation should lean on
  the image here; a text encoder shared by queries and titles must read "red" as decisive in a query and as
  noise in a title.
- **title_decided** (charger, cable, power bank, batteries, shampoo, vitamins, screws, notebook): products
  differ only in brand, material and size, which only the title states; all images of the category show the
  same object in the same colour (a few pixels of jitter apart). Queries ask for brand, material and size
  ("zentro 65w charger"). Modal Adaptation should lean on the title here; a fixed title/image mix is wrong
  for one group or the other.

Titles are long and keyword-stuffed (brand, category words, material, size, sales filler such as "2024 hot
sale free shipping"). Queries have 1-3 terms and the query/title shift of a real shop: colloquial words and
synonyms ("kicks" for sneakers, "brolly", "crimson"), abbreviations ("alu", "pb", "6ft"), and recurring typos
("umbrela"), which a separate query encoder can learn without disturbing the title tower. Near-duplicates are
everywhere: within a category, most products differ from another one in a single attribute.

Some title terms never occur in a training query: the last two brands and the last material of every
title-decided category (and all sales filler). Those products are in the training split, so the terms are in
training titles; only Keyword Enhancement (keywords drawn from titles, encoded by the query tower) teaches the
query tower these words. Some attribute pairs (one in four, chosen by seed) never occur together in a training
query.

Each validation/test query carries a `bucket`, computed against the training queries:

- `seen_phrasing`: the exact query string occurs among the training queries (for other products);
- `new_combination`: every term occurs in training queries, but never this string;
- `title_only_term`: at least one term never occurs in a training query but does occur in training titles.

Generated queries fitting none of the three (for example a typo never seen in training) are dropped.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw

import datasets

from ..keywords import stable_hash64
from .evaluation_splits import HELD_OUT_SPLITS, products_split, queries_split

IMAGE_DECIDED = "image_decided"
TITLE_DECIDED = "title_decided"
BUCKETS = ("seen_phrasing", "new_combination", "title_only_term")


@dataclass(frozen=True)
class ShopCategory:
    """One product category of the synthetic shop.

    `title_words` appear in every title of the category; `query_forms` are what shoppers type for it (the first
    one also appears in titles, the others are colloquial forms, synonyms or abbreviations). Image-decided
    categories have one brand, material and size and vary colour and pattern; title-decided categories have one
    `colour` (and the plain pattern) and vary brand, material and size.
    """

    name: str
    group: str
    shape: str
    title_words: tuple[str, ...]
    query_forms: tuple[str, ...]
    brands: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    colour: str | None = None

    @property
    def title_only_values(self) -> frozenset[str]:
        """Brands and materials that no training query uses (only title-decided categories have them)."""
        if self.group != TITLE_DECIDED:
            return frozenset()
        return frozenset(self.brands[-2:] + self.materials[-1:])


# name: (RGB, query forms). Colours are never written in titles: only the picture shows them.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((204, 32, 39), ("red", "crimson", "scarlet")),
    "orange": ((240, 128, 24), ("orange", "tangerine")),
    "yellow": ((246, 214, 40), ("yellow", "mustard")),
    "green": ((46, 160, 60), ("green", "emerald")),
    "teal": ((20, 150, 150), ("teal", "turquoise")),
    "blue": ((36, 80, 210), ("blue", "cobalt")),
    "purple": ((122, 48, 170), ("purple", "violet")),
    "pink": ((246, 140, 190), ("pink", "rose")),
    "brown": ((120, 72, 36), ("brown", "chocolate")),
    "black": ((24, 24, 24), ("black", "blk")),
    "white": ((250, 250, 250), ("white", "wht", "ivory")),
    "grey": ((128, 128, 128), ("grey", "gray")),
}
PATTERNS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripes", "stripy"),
    "dotted": ("dotted", "polka", "spotty"),
    "checked": ("checked", "plaid", "gingham"),
    "floral": ("floral", "flowery"),
}
# Query forms of title attribute values: the title's own word first, then what shoppers type instead.
VALUE_QUERY_FORMS: dict[str, tuple[str, ...]] = {
    "20w": ("20w", "20watt"), "45w": ("45w", "45watt"), "65w": ("65w", "65watt"), "100w": ("100w", "100watt"),
    "1m": ("1m", "3ft"), "2m": ("2m", "6ft"), "3m": ("3m", "10ft"),
    "5000mah": ("5000mah", "5k"), "10000mah": ("10000mah", "10k"), "20000mah": ("20000mah", "20k"),
    "aa": ("aa",), "aaa": ("aaa", "triplea"), "9v": ("9v", "9volt"),
    "250ml": ("250ml", "mini"), "500ml": ("500ml",), "1l": ("1l", "1litre", "jumbo"),
    "60ct": ("60ct", "60count"), "120ct": ("120ct", "120count"), "240ct": ("240ct", "240count"),
    "gan": ("gan", "gallium"), "plastic": ("plastic",), "aluminium": ("aluminium", "aluminum", "alu"),
    "braided": ("braided", "braid"), "nylon": ("nylon",), "silicone": ("silicone", "silicon"),
    "slim": ("slim", "thin"), "magnetic": ("magnetic", "magsafe"), "solar": ("solar",),
    "alkaline": ("alkaline", "alk"), "lithium": ("lithium", "lith"), "nimh": ("nimh", "rechargeable"),
    "argan": ("argan",), "keratin": ("keratin",), "coconut": ("coconut", "coco"),
    "gummy": ("gummy", "gummies"), "capsule": ("capsule", "caps"), "softgel": ("softgel", "softgels"),
    "steel": ("steel", "stainless"), "brass": ("brass",), "titanium": ("titanium", "ti"),
    "m3": ("m3",), "m4": ("m4",), "m5": ("m5",), "a4": ("a4",), "a5": ("a5",), "a6": ("a6",),
    "kraft": ("kraft",), "leather": ("leather", "pu"), "recycled": ("recycled", "eco"),
}
# Sales filler stuffed into titles; shoppers never type it.
TITLE_FILLER: tuple[str, ...] = (
    "new", "2024", "hot", "sale", "free", "shipping", "premium", "quality", "official", "store", "genuine",
    "fashion", "trendy", "bestseller", "authentic", "gift", "classic", "original", "durable", "deluxe",
    "upgraded", "popular", "limited", "edition", "fast", "delivery", "wholesale", "discount",
)

CATEGORIES: tuple[ShopCategory, ...] = (
    ShopCategory("tshirt", IMAGE_DECIDED, "tshirt", ("tshirt", "short", "sleeve", "crew", "neck", "top"),
                 ("tshirt", "tee", "tshirts"), ("zerel",), ("cotton",), ("regular",)),
    ShopCategory("dress", IMAGE_DECIDED, "dress", ("dress", "women", "summer", "midi"),
                 ("dress", "frock", "sundress"), ("gapize",), ("viscose",), ("freesize",)),
    ShopCategory("sneakers", IMAGE_DECIDED, "sneakers", ("sneakers", "running", "shoes", "sport"),
                 ("sneakers", "kicks", "trainers"), ("labapo",), ("mesh",), ("unisex",)),
    ShopCategory("mug", IMAGE_DECIDED, "mug", ("mug", "coffee", "cup", "tea"),
                 ("mug", "mugs", "cuppa"), ("zurafun",), ("stoneware",), ("350ml",)),
    ShopCategory("cushion", IMAGE_DECIDED, "cushion", ("cushion", "cover", "throw", "sofa"),
                 ("cushion", "pillow", "pillowcase"), ("dalen",), ("linen",), ("45cm",)),
    ShopCategory("umbrella", IMAGE_DECIDED, "umbrella", ("umbrella", "windproof", "compact", "rain"),
                 ("umbrella", "brolly", "parasol"), ("navil",), ("pongee",), ("folding",)),
    ShopCategory("backpack", IMAGE_DECIDED, "backpack", ("backpack", "school", "bag", "laptop"),
                 ("backpack", "rucksack", "bookbag"), ("kepafa",), ("canvas",), ("20l",)),
    ShopCategory("vase", IMAGE_DECIDED, "vase", ("vase", "flower", "decor", "home"),
                 ("vase", "vases", "planter"), ("fuzilor",), ("ceramic",), ("25cm",)),
    ShopCategory("charger", TITLE_DECIDED, "charger", ("charger", "wall", "charging", "adapter"),
                 ("charger", "chrgr", "plug"), ("ditix", "bozakas", "kozux", "vonamu", "zavopol", "zipan",
                                                "besunur", "tudan"),
                 ("gan", "plastic", "aluminium"), ("20w", "45w", "65w", "100w"), colour="white"),
    ShopCategory("cable", TITLE_DECIDED, "cable", ("cable", "usb", "cord", "data"),
                 ("cable", "wire", "lead"), ("luven", "fodan", "zosani", "tidos", "gadumi", "ledizes", "givel",
                                             "feser"),
                 ("braided", "nylon", "silicone"), ("1m", "2m", "3m"), colour="black"),
    ShopCategory("powerbank", TITLE_DECIDED, "powerbank", ("powerbank", "portable", "battery", "pack"),
                 ("powerbank", "pwrbank", "pb"), ("daran", "febudi", "vanokun", "rudibi", "dubumu", "gazeden",
                                                  "dapapix", "pezis"),
                 ("slim", "magnetic", "solar"), ("5000mah", "10000mah", "20000mah"), colour="grey"),
    ShopCategory("batteries", TITLE_DECIDED, "batteries", ("batteries", "cells", "household", "power"),
                 ("batteries", "batts", "batterys"), ("vepunor", "pubise", "seral", "mebuban", "zerusen",
                                                      "tusur", "ranoga", "dalor"),
                 ("alkaline", "lithium", "nimh"), ("aa", "aaa", "9v"), colour="yellow"),
    ShopCategory("shampoo", TITLE_DECIDED, "shampoo", ("shampoo", "hair", "care", "wash"),
                 ("shampoo", "hairwash", "shampoos"), ("gesan", "rizores", "kevex", "mezagax", "vusex",
                                                       "mobober", "puris", "pabax"),
                 ("argan", "keratin", "coconut"), ("250ml", "500ml", "1l"), colour="teal"),
    ShopCategory("vitamins", TITLE_DECIDED, "vitamins", ("vitamins", "supplements", "daily", "health"),
                 ("vitamins", "vitamin", "multivitamin"), ("lotox", "navokon", "vorex", "vomor", "lareti",
                                                           "dimir", "kizimux", "ketox"),
                 ("gummy", "capsule", "softgel"), ("60ct", "120ct", "240ct"), colour="orange"),
    ShopCategory("screws", TITLE_DECIDED, "screws", ("screws", "fasteners", "bolts", "hardware"),
                 ("screws", "screw", "bolt"), ("vesex", "tedex", "dokox", "zuzovo", "pezotal", "sizix",
                                               "nonal", "lozux"),
                 ("steel", "brass", "titanium"), ("m3", "m4", "m5"), colour="grey"),
    ShopCategory("notebook", TITLE_DECIDED, "notebook", ("notebook", "journal", "paper", "ruled"),
                 ("notebook", "notepad", "jotter"), ("dudan", "diluvun", "girogor", "libix", "vavamex",
                                                     "gezix", "fodalu", "bunir"),
                 ("kraft", "leather", "recycled"), ("a4", "a5", "a6"), colour="brown"),
)

# (attributes named by the query besides the category, whether the category is named, weight)
_IMAGE_TEMPLATES = ((("colour",), True, 0.35), (("pattern",), True, 0.25), (("colour", "pattern"), True, 0.40))
_TITLE_TEMPLATES = (
    (("brand",), False, 0.10), (("brand",), True, 0.20), (("material",), True, 0.20), (("size",), True, 0.15),
    (("brand", "size"), True, 0.15), (("material", "size"), True, 0.10), (("brand", "material"), True, 0.10),
)
_TYPO_RATE = 0.1
_CATEGORY_FIRST_RATE = 0.15


@dataclass
class _Product:
    product_id: str
    category: ShopCategory
    colour: str
    pattern: str
    brand: str
    material: str
    size: str
    title: str = ""
    image: bytes = b""


@dataclass(frozen=True)
class _Query:
    text: str
    category: str
    constraints: tuple[tuple[str, str], ...]  # (attribute, value) pairs a relevant product must have


def _stable_int(*parts: object) -> int:
    return stable_hash64("|".join(map(str, parts)), byteorder="little")


def _typo(term: str) -> str | None:
    """The one recurring misspelling of `term` (fixed per term, so shoppers repeat it), or None for short terms."""
    if len(term) < 5 or not term.isalpha():
        return None
    h = _stable_int("typo", term)
    i = 1 + h % (len(term) - 2)
    kind = (h >> 8) % 3
    if kind == 0:
        return term[:i] + term[i + 1 :]
    if kind == 1:
        return term[:i] + term[i + 1] + term[i] + term[i + 2 :]
    return term[:i] + term[i] + term[i:]


def _query_vocabulary() -> set[str]:
    words: set[str] = set()
    for forms in [c[1] for c in COLOURS.values()] + list(PATTERNS.values()) + list(VALUE_QUERY_FORMS.values()):
        words.update(forms)
    for category in CATEGORIES:
        words.update(category.query_forms)
        words.update(category.brands)
    return words


_QUERY_VOCABULARY = _query_vocabulary()
_TYPOS: dict[str, str] = {}
for _word in sorted(_QUERY_VOCABULARY):
    _misspelt = _typo(_word)
    if _misspelt is not None and _misspelt not in _QUERY_VOCABULARY and _misspelt != _word:
        _TYPOS[_word] = _misspelt


def _pick_form(rng: random.Random, forms: Sequence[str]) -> str:
    """The title's own word half of the time, otherwise a colloquial form, synonym or abbreviation."""
    if len(forms) == 1 or rng.random() < 0.5:
        return forms[0]
    return rng.choice(forms[1:])


def _value_forms(attribute: str, value: str) -> tuple[str, ...]:
    if attribute == "colour":
        return COLOURS[value][1]
    if attribute == "pattern":
        return PATTERNS[value]
    if attribute == "brand":
        return (value,)
    return VALUE_QUERY_FORMS[value]


def _held_out_pair(seed: int, product: _Product, attributes: Sequence[str]) -> bool:
    """One in four attribute pairs never appears together in a training query (new combinations at test time)."""
    if len(attributes) < 2:
        return False
    values = [getattr(product, a) for a in attributes]
    return _stable_int("pair", seed, product.category.name, *attributes, *values) % 4 == 0


def _make_query(
    rng: random.Random, product: _Product, attributes: Sequence[str], name_category: bool, allow_typo: bool
) -> _Query:
    reserved = product.category.title_only_values
    terms: list[str] = []
    typo_candidates: list[int] = []
    for attribute in attributes:
        value = getattr(product, attribute)
        if value in reserved:
            # Title-only terms are asked for with the title's own word: the point is that the word was never typed.
            terms.append(value)
        else:
            terms.append(_pick_form(rng, _value_forms(attribute, value)))
            typo_candidates.append(len(terms) - 1)
    if name_category:
        category_term = _pick_form(rng, product.category.query_forms)
        if rng.random() < _CATEGORY_FIRST_RATE:
            terms.insert(0, category_term)
            typo_candidates = [i + 1 for i in typo_candidates] + [0]
        else:
            terms.append(category_term)
            typo_candidates.append(len(terms) - 1)
    if allow_typo and rng.random() < _TYPO_RATE:
        eligible = [i for i in typo_candidates if terms[i] in _TYPOS]
        if eligible:
            i = rng.choice(eligible)
            terms[i] = _TYPOS[terms[i]]
    constraints = [("category", product.category.name)]
    constraints += [(attribute, getattr(product, attribute)) for attribute in attributes]
    return _Query(" ".join(terms), product.category.name, tuple(constraints))


def _templates(product: _Product):
    return _IMAGE_TEMPLATES if product.category.group == IMAGE_DECIDED else _TITLE_TEMPLATES


def _training_queries(rng: random.Random, seed: int, product: _Product, count: int) -> list[str]:
    reserved = product.category.title_only_values
    allowed = [
        (attributes, name_category, weight)
        for attributes, name_category, weight in _templates(product)
        if not any(getattr(product, a) in reserved for a in attributes)
        and not _held_out_pair(seed, product, attributes)
    ]
    queries: list[str] = []
    for _ in range(4 * count):
        if len(queries) == count or not allowed:
            break
        attributes, name_category, _ = rng.choices(allowed, weights=[w for *_, w in allowed])[0]
        text = _make_query(rng, product, attributes, name_category, allow_typo=True).text
        if text not in queries:
            queries.append(text)
    return queries


def _evaluation_queries(rng: random.Random, product: _Product, count: int) -> list[_Query]:
    templates = _templates(product)
    weights = [w for *_, w in templates]
    queries = []
    for _ in range(count):
        attributes, name_category, _ = rng.choices(templates, weights=weights)[0]
        queries.append(_make_query(rng, product, attributes, name_category, allow_typo=True))
    return queries


def _bucket(query: str, train_queries: set[str], train_query_terms: set[str], train_title_terms: set[str]):
    if query in train_queries:
        return "seen_phrasing"
    unseen = [term for term in query.split() if term not in train_query_terms]
    if not unseen:
        return "new_combination"
    if all(term in train_title_terms for term in unseen):
        return "title_only_term"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Drawing. Shapes are given on a unit square; the canvas is drawn at >= 128 px and downscaled.

_SHAPES = {
    "tshirt": [("poly", [(.30, .14), (.42, .14), (.50, .22), (.58, .14), (.70, .14), (.92, .32), (.81, .44),
                         (.72, .37), (.72, .88), (.28, .88), (.28, .37), (.19, .44), (.08, .32)])],
    "dress": [("poly", [(.40, .08), (.60, .08), (.62, .36), (.86, .92), (.14, .92), (.38, .36)])],
    "sneakers": [("poly", [(.06, .56), (.12, .38), (.38, .38), (.54, .50), (.84, .56), (.94, .68), (.94, .80),
                           (.06, .80)])],
    "mug": [("rect", (.18, .24, .68, .86)), ("ellipse", (.56, .36, .88, .74)), ("ellipse0", (.64, .45, .80, .65))],
    "cushion": [("rrect", (.12, .18, .88, .82, .14))],
    "umbrella": [("pie", (.06, .14, .94, .86, 180, 360)), ("rect", (.47, .48, .53, .84)),
                 ("ring", (.34, .76, .53, .92, 0.035))],
    "backpack": [("rrect", (.20, .26, .80, .92, .14)), ("ring", (.36, .08, .64, .36, 0.05))],
    "vase": [("ellipse", (.20, .40, .80, .92)), ("rect", (.39, .16, .61, .50)), ("rect", (.32, .10, .68, .18))],
    "charger": [("rrect", (.26, .32, .74, .80, .06)), ("rect", (.36, .14, .43, .32)), ("rect", (.57, .14, .64, .32))],
    "cable": [("ring", (.18, .18, .82, .82, 0.05)), ("ring", (.30, .30, .70, .70, 0.05)),
              ("rect", (.46, .04, .54, .30))],
    "powerbank": [("rrect", (.24, .10, .76, .90, .08))],
    "batteries": [("rect", (.18, .22, .42, .86)), ("rect", (.26, .14, .34, .22)),
                  ("rect", (.58, .22, .82, .86)), ("rect", (.66, .14, .74, .22))],
    "shampoo": [("rrect", (.28, .30, .72, .92, .08)), ("rect", (.42, .10, .58, .30))],
    "vitamins": [("rrect", (.22, .36, .78, .90, .05)), ("rect", (.18, .20, .82, .36))],
    "screws": [("rect", (.17, .10, .35, .20)), ("rect", (.21, .20, .31, .86)),
               ("rect", (.41, .10, .59, .20)), ("rect", (.45, .20, .55, .86)),
               ("rect", (.65, .10, .83, .20)), ("rect", (.69, .20, .79, .86))],
    "notebook": [("rect", (.22, .10, .80, .90))] + [("ellipse0", (.24, y, .30, y + .04)) for y in
                                                     (.16, .28, .40, .52, .64, .76)],
}
_FIXED_COLOURS = {"white": (250, 250, 250), "black": (30, 30, 30), "grey": (110, 110, 116),
                  "yellow": (214, 176, 56), "teal": (24, 140, 148), "orange": (236, 120, 30), "brown": (128, 84, 48)}


def _draw_mask(shape: str, size: int, scale: float, dx: float, dy: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    def px(x: float, y: float) -> tuple[float, float]:
        return (((x - 0.5) * scale + 0.5 + dx) * size, ((y - 0.5) * scale + 0.5 + dy) * size)

    def box(b: Sequence[float]) -> list[float]:
        (x0, y0), (x1, y1) = px(b[0], b[1]), px(b[2], b[3])
        return [x0, y0, x1, y1]

    for kind, spec in _SHAPES[shape]:
        if kind == "poly":
            draw.polygon([px(x, y) for x, y in spec], fill=255)
        elif kind == "rect":
            draw.rectangle(box(spec), fill=255)
        elif kind == "rrect":
            draw.rounded_rectangle(box(spec), radius=spec[4] * scale * size, fill=255)
        elif kind == "ellipse":
            draw.ellipse(box(spec), fill=255)
        elif kind == "ellipse0":
            draw.ellipse(box(spec), fill=0)
        elif kind == "pie":
            draw.pieslice(box(spec), start=spec[4], end=spec[5], fill=255)
        elif kind == "ring":
            draw.ellipse(box(spec), outline=255, width=max(1, round(spec[4] * scale * size)))
    return mask


def _texture(size: int, colour: tuple[int, int, int], pattern: str, rng: random.Random) -> Image.Image:
    texture = Image.new("RGB", (size, size), colour)
    if pattern == "plain":
        return texture
    light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150
    contrast = (50, 50, 60) if light else (245, 245, 240)
    draw = ImageDraw.Draw(texture)
    period = size / 8
    phase = rng.random() * period
    steps = range(-1, 10)
    if pattern == "striped":
        for k in steps:
            y = k * period + phase
            draw.rectangle([0, y, size, y + 0.4 * period], fill=contrast)
    elif pattern == "dotted":
        r = period * 0.24
        for row in steps:
            for col in steps:
                x = col * period + phase + (period / 2 if row % 2 else 0)
                y = row * period + phase
                draw.ellipse([x - r, y - r, x + r, y + r], fill=contrast)
    elif pattern == "checked":
        mixed = tuple((a + b) // 2 for a, b in zip(colour, contrast))
        for row in steps:
            for col in steps:
                if (row + col) % 2:
                    x, y = col * period + phase, row * period + phase
                    draw.rectangle([x, y, x + period, y + period], fill=mixed)
    elif pattern == "floral":
        r = period * 0.22
        centre = (240, 200, 30) if not light else (200, 40, 60)
        for row in range(-1, 5):
            for col in range(-1, 5):
                cx = col * 2 * period + phase + (period if row % 2 else 0)
                cy = row * 2 * period + phase
                for ox, oy in ((0, -1), (0.95, -0.31), (0.59, 0.81), (-0.59, 0.81), (-0.95, -0.31)):
                    x, y = cx + ox * 1.6 * r, cy + oy * 1.6 * r
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=contrast)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=centre)
    return texture


def draw_product_image(
    shape: str, colour: tuple[int, int, int], pattern: str, rng: random.Random, image_size: int = 64
) -> Image.Image:
    """Draw one product: the category's silhouette filled with `colour` and `pattern` on a light background.

    `rng` adds the jitter that makes two copies of a product differ by a few pixels (position, scale, background).
    """
    size = max(128, image_size)
    scale = rng.uniform(0.84, 1.0)
    dx, dy = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)
    grey = rng.randint(206, 234)
    background = tuple(min(255, max(0, grey + rng.randint(-4, 4))) for _ in range(3))
    canvas = Image.new("RGB", (size, size), background)
    mask = _draw_mask(shape, size, scale, dx, dy)
    canvas.paste(_texture(size, colour, pattern, rng), mask=mask)
    dilated = mask
    for dx_, dy_ in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        dilated = ImageChops.lighter(dilated, ImageChops.offset(mask, dx_, dy_))
    outline = ImageChops.subtract(dilated, mask)
    canvas.paste(tuple(int(c * 0.5) for c in colour), mask=outline)
    if size != image_size:
        canvas = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return canvas


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------


def _title(rng: random.Random, product: _Product) -> str:
    category = product.category
    body = list(category.title_words[1:]) + [product.material, product.size]
    body += rng.sample(TITLE_FILLER, rng.randint(3, 7))
    if category.group == IMAGE_DECIDED:
        # Sellers list the variants they sell, not the one in the picture: colour (and pattern) words drawn
        # without looking at the product, so a title names colours but never tells which one this product has.
        body += rng.sample(list(COLOURS), rng.randint(2, 4))
        if rng.random() < 0.5:
            body.append(rng.choice(list(PATTERNS)))
    rng.shuffle(body)
    # Sellers lead with brand and category word, then stuff the rest.
    return " ".join([product.brand, category.title_words[0]] + body)


def _make_products(num_products: int, seed: int, image_size: int) -> list[_Product]:
    rng = random.Random(f"make-hf-shop-{seed}")
    per_category: dict[str, list[tuple[str, str, str, str, str]]] = {}
    for category in CATEGORIES:
        if category.group == IMAGE_DECIDED:
            combos = [(c, p, category.brands[0], category.materials[0], category.sizes[0])
                      for c in COLOURS for p in PATTERNS]
        else:
            combos = [(category.colour, "plain", b, m, s)
                      for b in category.brands for m in category.materials for s in category.sizes]
        rng.shuffle(combos)
        # Deal the combinations round-robin over colours (brands) so that even a small shop shows every value.
        lead = {}
        for combo in combos:
            lead.setdefault(combo[0] if category.group == IMAGE_DECIDED else combo[2], []).append(combo)
        hands = list(lead.values())
        per_category[category.name] = [hand[k] for k in range(max(map(len, hands))) for hand in hands
                                       if k < len(hand)]
    products = []
    for i in range(num_products):
        category = CATEGORIES[i % len(CATEGORIES)]
        combos = per_category[category.name]
        # Beyond one of each combination, products repeat (several sellers, one item): true duplicates.
        colour, pattern, brand, material, size = combos[(i // len(CATEGORIES)) % len(combos)]
        product = _Product(f"sku{i:05d}", category, colour, pattern, brand, material, size)
        item_rng = random.Random(f"make-hf-shop-{seed}-{i}")
        product.title = _title(item_rng, product)
        rgb = COLOURS[colour][0] if category.group == IMAGE_DECIDED else _FIXED_COLOURS[colour]
        product.image = _png(draw_product_image(category.shape, rgb, pattern, item_rng, image_size))
        products.append(product)
    return products


def _split_products(products: list[_Product], fractions: Sequence[float], seed: int) -> dict[str, list[_Product]]:
    rng = random.Random(f"make-hf-split-{seed}")
    by_category: dict[str, list[_Product]] = {}
    for product in products:
        by_category.setdefault(product.category.name, []).append(product)
    for members in by_category.values():
        rng.shuffle(members)
    # Round-robin over categories so that every split gets every category in proportion.
    ordered = [members[k] for k in range(max(map(len, by_category.values())))
               for members in by_category.values() if k < len(members)]
    n = len(ordered)
    n_validation = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    return {
        "validation": sorted(ordered[:n_validation], key=lambda p: p.product_id),
        "test": sorted(ordered[n_validation : n_validation + n_test], key=lambda p: p.product_id),
        "train": sorted(ordered[n_validation + n_test :], key=lambda p: p.product_id),
    }


_ATTRIBUTES = ("colour", "pattern", "brand", "material", "size")


def _dataset(columns: dict[str, list], features: datasets.Features, description: str) -> datasets.Dataset:
    info = datasets.DatasetInfo(description=description, features=features)
    return datasets.Dataset.from_dict(columns, features=features, info=info)


def _products_dataset(products: list[_Product], description: str) -> datasets.Dataset:
    columns = {
        "product_id": [p.product_id for p in products],
        "title": [p.title for p in products],
        "image": [{"bytes": p.image, "path": None} for p in products],
        "category": [p.category.name for p in products],
        "category_group": [p.category.group for p in products],
    }
    for attribute in _ATTRIBUTES:
        columns[attribute] = [getattr(p, attribute) for p in products]
    features = datasets.Features(
        {name: datasets.Image() if name == "image" else datasets.Value("string") for name in columns}
    )
    return _dataset(columns, features, description)


def _matches(product: _Product, constraints: Sequence[tuple[str, str]]) -> bool:
    return all(
        (product.category.name if attribute == "category" else getattr(product, attribute)) == value
        for attribute, value in constraints
    )


def make_synthetic_shop(
    num_products: int = 3200,
    *,
    queries_per_product: int = 5,
    eval_queries_per_product: int = 3,
    image_size: int = 64,
    split_fractions: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
) -> datasets.DatasetDict:
    """Build the synthetic shop (see the module docstring for what it contains and why).

    Args:
        num_products: catalogue size, spread evenly over the 16 categories (at least 3, so that every split has
            a product). The default, 3200, gives about 8,000 training rows (1,600 products) and 800 products with
            about 1,900 queries per evaluation split.
        queries_per_product: distinct training queries drawn per training product (fewer when the product's
            allowed templates cannot produce that many distinct strings).
        eval_queries_per_product: queries drawn per validation/test product before de-duplication; identical
            strings are merged and judged against every matching product of the split.
        image_size: side of the square PNG images, in pixels.
        split_fractions: (train, validation, test) fractions of the products.
        seed: everything (attribute assignment, titles, jitter, queries, splits) follows from it.

    Returns:
        `DatasetDict` with `train`, `validation_products`, `validation_queries`, `test_products`, `test_queries`.
    """
    if num_products < 3:
        raise ValueError(f"num_products={num_products}: the shop needs at least 3 products (one per split).")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions={tuple(split_fractions)} must be three non-negative numbers summing to 1.")
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to show a pattern; use 16 or more.")

    products = _make_products(num_products, seed, image_size)
    splits = _split_products(products, split_fractions, seed)

    rng = random.Random(f"make-hf-queries-{seed}")
    train_columns: dict[str, list] = {k: [] for k in ("query", "title", "image", "product_id", "category",
                                                      "category_group")}
    for product in splits["train"]:
        for query in _training_queries(rng, seed, product, queries_per_product):
            train_columns["query"].append(query)
            train_columns["title"].append(product.title)
            train_columns["image"].append({"bytes": product.image, "path": None})
            train_columns["product_id"].append(product.product_id)
            train_columns["category"].append(product.category.name)
            train_columns["category_group"].append(product.category.group)
    train_queries = set(train_columns["query"])
    train_query_terms = {term for query in train_queries for term in query.split()}
    train_title_terms = {term for product in splits["train"] for term in product.title.split()}

    description = f"make_hf synthetic shop (num_products={num_products}, seed={seed})"
    train_features = datasets.Features({name: datasets.Image() if name == "image" else datasets.Value("string")
                                        for name in train_columns})
    result = {"train": _dataset(train_columns, train_features, description)}
    query_features = datasets.Features({
        "query": datasets.Value("string"),
        "relevant_ids": datasets.List(datasets.Value("string")),
        "bucket": datasets.Value("string"),
        "category": datasets.Value("string"),
        "category_group": datasets.Value("string"),
    })
    for split in HELD_OUT_SPLITS:
        split_products = splits[split]
        seen: dict[str, _Query] = {}
        for product in split_products:
            for query in _evaluation_queries(rng, product, eval_queries_per_product):
                if query.text not in seen:
                    seen[query.text] = query
        by_category: dict[str, list[_Product]] = {}
        for product in split_products:
            by_category.setdefault(product.category.name, []).append(product)
        rows: dict[str, list] = {k: [] for k in query_features}
        for text, query in seen.items():
            bucket = _bucket(text, train_queries, train_query_terms, train_title_terms)
            if bucket is None:
                continue
            candidates = by_category[query.category]
            rows["query"].append(text)
            rows["relevant_ids"].append([p.product_id for p in candidates if _matches(p, query.constraints)])
            rows["bucket"].append(bucket)
            rows["category"].append(query.category)
            rows["category_group"].append(candidates[0].category.group)
        result[products_split(split)] = _products_dataset(split_products, f"{description}: {split} catalogue")
        result[queries_split(split)] = _dataset(rows, query_features, f"{description}: {split} queries")
    return datasets.DatasetDict(result)


__all__ = [
    "BUCKETS",
    "CATEGORIES",
    "COLOURS",
    "IMAGE_DECIDED",
    "PATTERNS",
    "TITLE_DECIDED",
    "TITLE_FILLER",
    "VALUE_QUERY_FORMS",
    "ShopCategory",
    "draw_product_image",
    "make_synthetic_shop",
]
