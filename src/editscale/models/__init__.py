"""Models: loading (hub id, folder, GGUF, the embedded SmolLM2), per-architecture layouts, hooks
and token positions."""

from .layout import KNOWN_LAYOUTS, Layout, layout_for
from .loading import (
           EMBEDDED,
           gguf_to_folder,
           inspect_local,
           local_config,
           load,
           load_tokenizer,
           resolve,
           slug,
)

__all__ = ["EMBEDDED", "KNOWN_LAYOUTS", "Layout", "gguf_to_folder", "inspect_local", "local_config", "layout_for", "load",
           "load_tokenizer", "resolve", "slug"]
