"""Models: loading (hub id, folder, GGUF, the embedded SmolLM2), per-architecture layouts, hooks
and token positions."""

from .layout import KNOWN_LAYOUTS, Layout, layout_for
from .loading import (
           EMBEDDED,
           context_length,
           folder_problems,
           gguf_to_folder,
           inspect_local,
           load,
           load_tokenizer,
           local_config,
           resolve,
           skeleton,
           slug,
)

__all__ = ["EMBEDDED", "KNOWN_LAYOUTS", "Layout", "context_length", "folder_problems", "gguf_to_folder", "inspect_local", "layout_for",
           "load", "load_tokenizer", "local_config", "resolve", "skeleton", "slug"]
