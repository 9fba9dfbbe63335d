"""make_hf: MAKE (Modal Adaptation and Keyword Enhancement) for text-to-multimodal product retrieval."""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_make import PRESET_NAMES, MakeConfig
from .modeling_make import MakeModel, MakeOutput, MakePreTrainedModel, MakeProductOutput, ModalAdaptation
from .image_utils import load_image, load_images
from .keywords import KeywordExtractor, hash_term
from .processing_make import MakeProcessor
from .tokenization import train_tokenizer
from .evaluation import evaluate_retrieval
from .index import ProductIndex
from .retrieval import MakeRetriever

AutoConfig.register("make", MakeConfig, exist_ok=True)
AutoModel.register(MakeConfig, MakeModel, exist_ok=True)
AutoProcessor.register(MakeConfig, MakeProcessor, exist_ok=True)

__all__ = [
    "__version__",
    "MakeConfig",
    "MakeModel",
    "MakeOutput",
    "MakePreTrainedModel",
    "MakeProductOutput",
    "ModalAdaptation",
    "KeywordExtractor",
    "MakeProcessor",
    "hash_term",
    "load_image",
    "load_images",
    "train_tokenizer",
    "PRESET_NAMES",
    "ProductIndex",
    "MakeRetriever",
    "evaluate_retrieval",
]
