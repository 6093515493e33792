"""editscale: model-editing studies (ROME, MEMIT, EMMET, AlphaEdit, ENCORE) as a reproducible
workflow, and a library that edits a model in one call (`Editor`, `Edit`, `export`), scores facts on
it teacher-forced and by live decoding (`evaluate`) and checks what the edits cost it (`downstream`)."""

__version__ = "0.1.0"
__all__ = ["Edit", "Editor", "downstream", "evaluate", "export", "models"]


def __getattr__(name):  # lazy: `import editscale` stays cheap, torch loads on first use
    if name in ("Edit", "Editor", "export"):
        from editscale import editor

        return getattr(editor, name)
    if name == "downstream":  # editscale.downstream(model, tok, tasks=...): general ability, edited or not
        from editscale.evaluation.downstream import evaluate

        return evaluate
    if name == "evaluate":  # editscale.evaluate(model, tok, facts, edit=...): both protocols, per fact
        from editscale.evaluation.facts import evaluate

        return evaluate
    if name == "models":
        import editscale.models

        return editscale.models
    raise AttributeError(f"module 'editscale' has no attribute {name!r}")
