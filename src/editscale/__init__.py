"""editscale: model-editing studies (ROME, MEMIT, EMMET, AlphaEdit) as a reproducible workflow."""

__version__ = "0.1.0"
