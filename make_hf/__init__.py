"""make_hf: MAKE (Modal Adaptation and Keyword Enhancement) for text-to-multimodal product retrieval."""

__version__ = "0.1.0"

__all__ = ["__version__"]
