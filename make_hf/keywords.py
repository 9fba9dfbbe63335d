"""Keyword extraction for Keyword Enhancement, and the term normalisation shared by queries and keywords.

A seller-written title is long and keyword-stuffed ("2024 new breathable running shoes men women mesh sport
sneakers"); a query is short ("running sneakers"). `KeywordExtractor` turns a title into a short, query-like
keyword string made of its most salient terms, which MAKE encodes with the query tower.

Salience is ours (the paper gives no formula): inverse document frequency over the title corpus, multiplied by a
boost for terms that shoppers' queries actually use when they lead to a title containing the term
(`score(t) = idf(t) * (1 + query_weight * hits(t) / (pairs(t) + 1))`). Non-informative tokens are never
keywords: stop words, numbers and years, sizes and measures ("39-45", "100ml", "xl"), shop filler ("new",
"hot", "sale", "free shipping", "包邮") and the brand or model that follows "for" / "compatible with" (a phone
case "for iPhone 15" is not an iPhone).

Terms (`KeywordExtractor.terms`) are lower-cased, NFKC-normalised word tokens. Chinese runs are segmented with
jieba when it is installed (`pip install make-hf[zh]`) and into overlapping character bigrams when it is not;
`terms` uses jieba's search mode (a word and its sub-words: "运动鞋" gives "运动", "运动鞋") so that a query
term is found inside a longer keyword, while keyword candidates use its precise mode. `hash_term` maps a term
to a stable positive id: the processor emits hashed terms so the model can test, on any batch, whether the
keywords of a product contain every term of a query.

Only the standard library is imported at module level (jieba lazily), because this file is copied next to a
saved processor and loaded as remote code.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any


logger = logging.getLogger(__name__)

_TERM_ID_MODULUS = 2**62 - 1

ENGLISH_STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by could did do does doing down during each either etc few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself neither no nor not of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to too
    under until up upon very via was we were what when where which while who whom why will with within without
    would you your yours yourself yourselves per vs
    """.split()
)
"""Function words: never informative for retrieval."""

ENGLISH_FILLER_WORDS = frozenset(
    """
    new newest latest hot sale sales selling seller bestseller bestselling best free shipping delivery
    quality premium original genuine authentic official brand branded cheap cheapest discount discounted
    promo promotion deal deals offer offers clearance wholesale dropshipping dropship instock fashion
    fashionable stylish trendy popular style styles item items product products pcs pc piece pieces lot lots
    size sizes color colors colour colours compatible fits inch inches cm mm ml kg lbs oz
    """.split()
)
"""Shop filler: words sellers add to every title ("2024 new hot sale free shipping"). Words that are filler in
one title and a product in another ("top" in "tank top", "high" in "high heels", "can") are left to the IDF."""

CHINESE_STOP_WORDS = frozenset(
    "的 了 和 与 及 或 是 在 有 也 都 就 而 之 其 等 着 把 被 让 给 为 对 从 向 以 于 这 那 个 款 件 只 双 套 条 张 "
    "支 台 码 号 一 一个 我 你 他 她 它 们 我们 你们 他们".split()
)
"""Chinese function words and measure words ("双" in "一双鞋")."""

CHINESE_FILLER_WORDS = frozenset(
    "新款 新品 最新 热卖 热销 爆款 特价 包邮 免邮 促销 清仓 正品 官方 旗舰店 同款 网红 厂家 直销 批发 现货 "
    "秒杀 限时 优惠 折扣 顺丰 代发 推荐 精品 高档 时尚 潮流 款式 年 新 适用 适用于 适配 兼容 用于".split()
)
"""Chinese shop filler ("2024新款包邮")."""

FOR_TRIGGERS = frozenset({"for", "fits", "适用", "适用于", "适配", "兼容", "用于"})
"""Words after which sellers name another product's brand or model ("case for iPhone 15", "适用苹果")."""

FOR_PHRASE_PREFIXES = frozenset({"compatible", "works", "replacement"})
"""First word of two-word triggers ("compatible with", "works with", "replacement for")."""

MODEL_SUFFIXES = frozenset(
    "pro max plus ultra mini lite air se fe neo note edge series gen generation prime slim 5g".split()
)
"""Words that continue a model name after its number ("iPhone 15 Pro Max", "Galaxy S23 Ultra")."""

GENERIC_FOR_TARGETS = frozenset(
    """
    men man mens women woman womens ladies lady girls girl boys boy kids kid children child baby babies infant
    infants toddler toddlers teens teen adults adult unisex family mom mother dad father couple couples
    pets pet dogs dog cats cat puppy home house kitchen office school work outdoor outdoors indoor travel
    camping hiking running walking sports sport gym yoga fitness party wedding beach summer winter spring
    autumn fall daily everyday car cars bathroom bedroom garden
    男 女 男士 女士 男女 儿童 宝宝 婴儿 学生 家用 户外 室内 运动 旅行 办公 厨房 汽车 车载 宠物 狗 猫
    """.split()
)
"""Audiences, places and occasions: "shoes for men" names who it is for, not another brand."""

_SIZE_RE = re.compile(r"^(?:x{0,4}[sl]|m|[2-9]x[sl]|\d*x+l|xxs)$")
_MEASURE_RE = re.compile(
    r"^[\d.,/×x*+\-]*\d[\d.,/×x*+\-]*"
    r"(?:cm|mm|m|km|ml|l|g|kg|mg|oz|lb|lbs|in|inch|inches|ft|yd|mah|w|kw|v|hz|mhz|ghz|kb|mb|gb|tb|pcs|pc|"
    r"pack|packs|x|yr|yrs|year|years|st|nd|rd|th|s|码|号|个|件|只|双|套|条|张|片|包|瓶|盒|袋|克|千克|斤|毫升|升|"
    r"厘米|毫米|米|寸|英寸|年|月|日|岁|元)?$"
)

_CJK_RANGES = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef\U00030000-\U0003134f"
)
_CJK_RUN_RE = re.compile(f"[{_CJK_RANGES}]+")
_TOKEN_RE = re.compile(
    rf"(?P<cjk>[{_CJK_RANGES}]+)"
    rf"|(?P<word>[^\W_{_CJK_RANGES}]+(?:(?:['’\-]|(?<=\d)[.,](?=\d))[^\W_{_CJK_RANGES}]+)*)"
)
_POSSESSIVE_RE = re.compile(r"['’]s$")
# Spaces, hyphens and a few joiners continue a phrase; any other punctuation ends a "for <brand>" span.
_SOFT_GAP_RE = re.compile(r"^[\s\-&+]*$")

_JIEBA_LOCK = threading.Lock()
_JIEBA_TOKENIZER: Any = None
_JIEBA_MISSING = False


def stable_hash64(data: str | bytes, byteorder: str = "big") -> int:
    """A 64-bit hash of `data` (a string is hashed as UTF-8) that is the same in every process, machine and Python
    run, unlike `hash`: blake2b with an 8-byte digest, read as an unsigned integer in `byteorder`. The one hash
    behind term ids, product ids in a batch, derived product ids and the synthetic shop's fixed choices."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), byteorder)


def hash_term(term: str) -> int:
    """Stable id of a normalised term, in `[1, 2**62)`; 0 is reserved for padding.

    blake2b of the UTF-8 bytes, so the id is the same in every process and Python run (unlike `hash`), which
    keeps term ids comparable across data-loader workers, machines and saved datasets.
    """
    return stable_hash64(term) % _TERM_ID_MODULUS + 1


def _load_jieba() -> Any:
    """A private jieba tokenizer (isolated from words other code adds to jieba's global one), or None."""
    global _JIEBA_TOKENIZER, _JIEBA_MISSING
    if _JIEBA_TOKENIZER is not None or _JIEBA_MISSING:
        return _JIEBA_TOKENIZER
    with _JIEBA_LOCK:
        if _JIEBA_TOKENIZER is None and not _JIEBA_MISSING:
            try:
                import jieba
            except ImportError:
                _JIEBA_MISSING = True
                return None
            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _JIEBA_TOKENIZER = tokenizer
    return _JIEBA_TOKENIZER


def jieba_available() -> bool:
    """Whether jieba can be imported (Chinese word segmentation; else character bigrams)."""
    return _load_jieba() is not None


def _bigrams(run: str) -> list[str]:
    if len(run) < 2:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


class KeywordExtractor:
    """Picks the most salient terms of a product title, fitted on a title corpus (and optionally queries).

    Args:
        query_weight (`float`, defaults to 2.0):
            Strength of the query co-occurrence boost: a term that every query leading to its titles uses scores
            `1 + query_weight` times its IDF alone.
        min_df (`int`, defaults to 2):
            Terms seen in fewer titles are not stored. They score like unseen terms (the highest IDF), so this
            only reorders terms with document frequency <= 1 among themselves, and keeps the saved state small.
        chinese_segmentation (`str`, defaults to `"auto"`):
            `"jieba"`, `"bigrams"` (overlapping character bigrams, no dependency) or `"auto"` (jieba when
            installed). `fit` records what was used; a state fitted with jieba and loaded without it falls back to
            bigrams with a warning.
        drop_for_mentions (`bool`, defaults to True):
            Drop the brand/model named after "for", "fits", "compatible with" (up to 3 words, the model number
            and "pro", "max"-like suffixes after it, until punctuation) or after "适用", "兼容" ... (the next word
            and model numbers), unless the word is an audience, place or occasion ("shoes for men", "适用于厨房").
        extra_stop_words (`list[str]`, *optional*):
            More words that are never terms (lower-case), e.g. the shop's own name.
        document_frequency, num_titles, query_hits:
            Fitted state (see `to_dict`); leave unset and call `fit`.

    Example:
        ```python
        >>> extractor = KeywordExtractor().fit(titles, queries)
        >>> extractor.extract("2024 new breathable running shoes men women mesh sport sneakers", k=4)
        ['breathable', 'running', 'mesh', 'sneakers']
        ```
    """

    state_version = 1

    def __init__(
        self,
        query_weight: float = 2.0,
        min_df: int = 2,
        chinese_segmentation: str = "auto",
        drop_for_mentions: bool = True,
        extra_stop_words: Sequence[str] | None = None,
        document_frequency: dict[str, int] | None = None,
        num_titles: int = 0,
        query_hits: dict[str, Sequence[int]] | None = None,
    ):
        if chinese_segmentation not in ("auto", "jieba", "bigrams"):
            raise ValueError(
                f"`chinese_segmentation` must be 'auto', 'jieba' or 'bigrams', got {chinese_segmentation!r}."
            )
        if query_weight < 0:
            raise ValueError(f"`query_weight` must be >= 0, got {query_weight}.")
        if min_df < 1:
            raise ValueError(f"`min_df` must be >= 1, got {min_df}.")
        self.query_weight = float(query_weight)
        self.min_df = int(min_df)
        self.chinese_segmentation = chinese_segmentation
        self.drop_for_mentions = bool(drop_for_mentions)
        self.extra_stop_words = sorted({unicodedata.normalize("NFKC", w).lower() for w in extra_stop_words or ()})
        self._ignored = ENGLISH_STOP_WORDS | ENGLISH_FILLER_WORDS | CHINESE_STOP_WORDS | CHINESE_FILLER_WORDS
        self._ignored = self._ignored | frozenset(self.extra_stop_words)
        self.document_frequency = dict(document_frequency or {})
        self.num_titles = int(num_titles)
        self.query_hits = {term: (int(v[0]), int(v[1])) for term, v in (query_hits or {}).items()}
        self._segmenter: str | None = None  # resolved on first use: importing jieba costs ~0.6 s
        self._warned_unfitted = False

    @staticmethod
    def _resolve_segmenter(requested: str) -> str:
        if requested == "bigrams":
            return "bigrams"
        if jieba_available():
            return "jieba"
        if requested == "jieba":
            warnings.warn(
                "This keyword extractor was configured for jieba, which is not installed: Chinese text falls back "
                "to character bigrams, so its terms differ from the fitted ones. Install it with "
                "`pip install make-hf[zh]`.",
                stacklevel=3,
            )
        return "bigrams"

    @property
    def segmenter(self) -> str:
        """The Chinese segmentation in use: `"jieba"` or `"bigrams"`."""
        if self._segmenter is None:
            self._segmenter = self._resolve_segmenter(self.chinese_segmentation)
        return self._segmenter

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has seen at least one title."""
        return self.num_titles > 0

    # ------------------------------------------------------------------ tokenisation

    def _tokens(self, text: str, search_mode: bool) -> list[tuple[str, bool]]:
        """Normalised raw tokens with a flag telling whether punctuation separates them from the previous one."""
        if not isinstance(text, str):
            raise TypeError(f"Expected a string, got {type(text).__name__}.")
        text = unicodedata.normalize("NFKC", text).lower()
        tokens: list[tuple[str, bool]] = []
        previous_end = 0
        for match in _TOKEN_RE.finditer(text):
            hard_break = not _SOFT_GAP_RE.match(text[previous_end : match.start()])
            previous_end = match.end()
            run = match.group("cjk")
            if run is None:
                tokens.append((_POSSESSIVE_RE.sub("", match.group("word")), hard_break))
                continue
            if self.segmenter == "jieba":
                jieba_tokenizer = _load_jieba()
                pieces = jieba_tokenizer.cut_for_search(run) if search_mode else jieba_tokenizer.cut(run)
                pieces = [piece for piece in pieces if piece.strip()]
            else:
                pieces = _bigrams(run)
            for i, piece in enumerate(pieces):
                tokens.append((piece, hard_break and i == 0))
        return tokens

    def is_informative(self, term: str) -> bool:
        """Whether a normalised token can be a term: not a stop word, filler, number, year, size or measure."""
        if term in self._ignored:
            return False
        if _CJK_RUN_RE.fullmatch(term):
            return True
        if len(term) < 2 or _SIZE_RE.match(term) or _MEASURE_RE.match(term):
            return False
        if "-" in term and all(
            part in self._ignored or _MEASURE_RE.match(part) or _SIZE_RE.match(part) for part in term.split("-")
        ):
            return False
        return True

    def _for_mention_mask(self, tokens: list[tuple[str, bool]]) -> list[bool]:
        """True for tokens that name another product's brand/model after "for", "compatible with", "适用"..."""
        dropped = [False] * len(tokens)
        i = 0
        while i < len(tokens):
            token = tokens[i][0]
            is_trigger = token in FOR_TRIGGERS or (
                token in ("with", "for") and i > 0 and tokens[i - 1][0] in FOR_PHRASE_PREFIXES
            )
            if not is_trigger:
                i += 1
                continue
            # Chinese titles run on without spaces: after "适用" only the next word is the other brand.
            max_words = 1 if _CJK_RUN_RE.fullmatch(token) else 3
            words = 0
            seen_model_code = False
            j = i + 1
            while j < len(tokens) and not tokens[j][1]:
                candidate = tokens[j][0]
                if candidate in GENERIC_FOR_TARGETS or candidate in self._ignored:
                    break
                if words == 0 and not self.is_informative(candidate):
                    break  # "for 15 inch laptops" states a size, not another brand
                # Model numbers ("15", "s23", "x") ride along with the brand before them; "iphone15" is the brand.
                is_model_code = (
                    words > 0
                    and _CJK_RUN_RE.fullmatch(candidate) is None
                    and (any(ch.isdigit() for ch in candidate) or len(candidate) < 2)
                )
                if is_model_code:
                    seen_model_code = True
                elif seen_model_code and candidate not in MODEL_SUFFIXES:
                    break  # after the model number only "pro", "max", "ultra" ... still name the model
                else:
                    if words == max_words:
                        break
                    words += 1
                dropped[j] = True
                j += 1
            i = j if j > i + 1 else i + 1
        return dropped

    def terms(self, text: str) -> list[str]:
        """Informative normalised terms of a text, unique, in order of first appearance.

        The normalisation behind `query_term_ids` and `keyword_term_ids`: lower-cased, NFKC, stop words, filler,
        numbers and sizes dropped; Chinese through jieba's search mode (or bigrams).
        """
        seen: dict[str, None] = {}
        for token, _ in self._tokens(text, search_mode=True):
            if token not in seen and self.is_informative(token):
                seen[token] = None
        return list(seen)

    def candidates(self, title: str) -> list[str]:
        """Keyword candidates of a title: its informative terms (precise segmentation) minus "for <brand>"."""
        tokens = self._tokens(title, search_mode=False)
        dropped = self._for_mention_mask(tokens) if self.drop_for_mentions else [False] * len(tokens)
        seen: dict[str, None] = {}
        for (token, _), drop in zip(tokens, dropped):
            if not drop and token not in seen and self.is_informative(token):
                seen[token] = None
        return list(seen)

    # ------------------------------------------------------------------ fitting and scoring

    def fit(self, titles: Iterable[str], queries: Iterable[str] | None = None) -> KeywordExtractor:
        """Fit the IDF over `titles` (duplicates counted once) and the query boost over (query, title) pairs.

        Args:
            titles: product titles; a title repeated (one product, many queries) counts once for the IDF.
            queries: optional, aligned with `titles`: `queries[i]` is a search that led to `titles[i]`.

        Returns:
            `self`, fitted (previous state is replaced).
        """
        if isinstance(titles, str) or (queries is not None and isinstance(queries, str)):
            raise ValueError("`titles` and `queries` must be lists of strings, not a single string.")
        titles = list(titles)
        if queries is not None:
            queries = list(queries)
            if len(queries) != len(titles):
                raise ValueError(
                    f"`queries` must be aligned with `titles` (queries[i] led to titles[i]); got {len(queries)} "
                    f"queries for {len(titles)} titles."
                )
        for name, values in (("titles", titles), ("queries", queries or [])):
            for index, value in enumerate(values):
                if not isinstance(value, str):
                    raise ValueError(f"`{name}[{index}]` must be a string, got {type(value).__name__}.")
        document_frequency: Counter[str] = Counter()
        title_candidates: dict[str, list[str]] = {}
        for title in titles:
            if title not in title_candidates:
                title_candidates[title] = self.candidates(title)
                document_frequency.update(title_candidates[title])

        hits: Counter[str] = Counter()
        pairs: Counter[str] = Counter()
        if queries is not None:
            for title, query in zip(titles, queries):
                query_terms = set(self.terms(query))
                title_terms = title_candidates[title]
                pairs.update(title_terms)
                hits.update(term for term in title_terms if term in query_terms)

        self.num_titles = len(title_candidates)
        self.document_frequency = {t: c for t, c in sorted(document_frequency.items()) if c >= self.min_df}
        self.query_hits = {t: (hits[t], pairs[t]) for t in sorted(hits)}
        self._warned_unfitted = False
        return self

    def idf(self, term: str) -> float:
        """Smoothed inverse document frequency, `log((1 + N) / (1 + df)) + 1` (unseen terms score highest)."""
        return math.log((1 + self.num_titles) / (1 + self.document_frequency.get(term, 0))) + 1.0

    def score(self, term: str) -> float:
        """Salience of a term: IDF times the query co-occurrence boost."""
        hits, pairs = self.query_hits.get(term, (0, 0))
        return self.idf(term) * (1.0 + self.query_weight * hits / (pairs + 1))

    def extract(self, title: str, k: int = 8) -> list[str]:
        """The `k` most salient terms of `title`, in their order of appearance in the title.

        Ties are broken by position (earlier first), so the result is deterministic. Before `fit`, every term
        scores the same and the first `k` candidates are returned (a warning says so once).
        """
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        candidates = self.candidates(title)
        if len(candidates) <= k:
            return candidates
        if not self.is_fitted and not self._warned_unfitted:
            self._warned_unfitted = True
            logger.warning(
                "The keyword extractor is not fitted: keywords are the first informative terms of each title. "
                "Fit it on the training titles (and queries) with `processor.fit_keywords(titles, queries)`."
            )
        scores = [self.score(term) for term in candidates]
        best = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:k]
        return [candidates[i] for i in sorted(best)]

    def extract_batch(self, titles: Sequence[str], k: int = 8) -> list[list[str]]:
        """`extract` for each title."""
        return [self.extract(title, k) for title in titles]

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: the settings and the fitted counts (`from_dict` restores it exactly)."""
        return {
            "state_version": self.state_version,
            "query_weight": self.query_weight,
            "min_df": self.min_df,
            "chinese_segmentation": self.segmenter if self.is_fitted else self.chinese_segmentation,
            "drop_for_mentions": self.drop_for_mentions,
            "extra_stop_words": list(self.extra_stop_words),
            "num_titles": self.num_titles,
            "document_frequency": dict(self.document_frequency),
            "query_hits": {term: list(value) for term, value in self.query_hits.items()},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> KeywordExtractor:
        """Rebuild an extractor from `to_dict`'s output (None gives a default, unfitted extractor)."""
        if state is None:
            return cls()
        state = dict(state)
        version = state.pop("state_version", cls.state_version)
        if version > cls.state_version:
            raise ValueError(
                f"This keyword extractor state has version {version}; this make_hf understands up to "
                f"{cls.state_version}. Upgrade make_hf to load it."
            )
        return cls(**state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeywordExtractor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_titles={self.num_titles}, terms={len(self.document_frequency)}, "
            f"query_boosted_terms={len(self.query_hits)}, chinese_segmentation={self.chinese_segmentation!r})"
        )


__all__ = [
    "CHINESE_FILLER_WORDS",
    "CHINESE_STOP_WORDS",
    "ENGLISH_FILLER_WORDS",
    "ENGLISH_STOP_WORDS",
    "FOR_PHRASE_PREFIXES",
    "FOR_TRIGGERS",
    "GENERIC_FOR_TARGETS",
    "KeywordExtractor",
    "MODEL_SUFFIXES",
    "hash_term",
    "jieba_available",
    "stable_hash64",
]
