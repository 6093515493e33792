"""The store of C: where C of a model's layer is kept, what its path names, and how it is made
once. The workflow's stats rule and the `Editor` both come here, so they read and write the same
files with the same provenance (`covariance.write_stats`).

    results/<model slug>/stats/<stats_id>/layer<L>.safetensors

`stats_id` names every setting C depends on, with `auto` content resolved to its fingerprint: a
changed corpus file gets a new folder, never a stale C under the old name.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from editscale import artifacts, models, paths, settings
from editscale.data import corpus
from editscale.editing import covariance
from editscale.settings import Stats

log = logging.getLogger(__name__)


def corpus_source(source):
    """`auto`: the offline Wikipedia articles when present, else Wikipedia through `datasets`."""
    if source != "auto":
        return source
    shared = paths.shared_data()
    if shared is not None:
        return shared / "corpus" / "wikipedia-articles.txt"
    return {"hf": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "field": "text"}


def stats_id(stats: Stats) -> str:
    """The part of C's path that names every setting C depends on, with the content `auto`
    resolved to here: the corpus file's sha256, or the dataset spec's."""
    name = "auto" if stats.corpus == "auto" else models.slug(str(stats.corpus))
    content = hashlib.sha256(corpus.fingerprint(corpus_source(stats.corpus)).encode()).hexdigest()[:12]
    return (f"{name}-{content}-{stats.max_tokens}tok-len{stats.max_length}"
            f"{'-nofirst' if stats.skip_first_token else ''}")


def identity(stats: Stats, model_name: str, layers) -> str:
    """The partial sums' identity: C's name (`stats_id`: every setting that changes C, the corpus's
    content included) at `layers` of `model_name`, and what orders the float32 additions
    (`batch_tokens`, `covariance.WINDOW`), so a resumed C has the bits of an uninterrupted one. The
    one place the sums are described; nothing inside them checks it again."""
    return settings.digest([model_name, stats_id(stats), sorted(layers), stats.batch_tokens, covariance.WINDOW])


def stats_path(results, spec: str, stats: Stats, layer: int) -> Path:
    """C of `layer` for model `spec` under the results folder `results`."""
    return Path(results) / models.slug(spec) / "stats" / stats_id(stats) / f"layer{layer}.safetensors"


def max_length(model, setting) -> int:
    """`auto`: the model's context length, as the reference truncates; a number caps it."""
    context = models.context_length(model)
    return context if setting == "auto" else min(int(setting), context)


def compute(model, tokenizer, layout, stats: Stats, outputs: dict, *, model_name: str, progress: bool = True) -> None:
    """C at every layer of `outputs` ({layer: path}) from one pass that stops at the deepest,
    resumable: the partial sums are kept in the `artifacts.Parts` of the first output, named by
    `identity`."""
    source = corpus_source(stats.corpus)
    source_id = corpus.fingerprint(source)
    length = max_length(model, stats.max_length)
    parts = artifacts.Parts(outputs[min(outputs)], identity(stats, model_name, outputs))
    log.info("computing C at layers %s from %s in one pass", sorted(outputs), source_id)
    moments = covariance.second_moments(
        model, tokenizer, layout, list(outputs), corpus.iter_texts(source), max_tokens=stats.max_tokens,
        max_length=length, skip_first_token=stats.skip_first_token, batch_tokens=stats.batch_tokens,
        checkpoint=parts / "sums.safetensors", source_id=source_id, progress=progress)
    covariance.write_stats(moments, outputs, model_name=model_name, source_id=source_id,
                           dtype=next(model.parameters()).dtype, max_length=length,
                           skip_first_token=stats.skip_first_token)
    parts.clear()


def cached(model, tokenizer, layout, stats: Stats, results, layers, *, model_name: str,
           progress: bool = True) -> dict[int, Path]:
    """{layer: C's path} in the store under `results`, the missing layers computed once, together."""
    found = {layer: stats_path(results, model_name, stats, layer) for layer in layers}
    missing = {layer: path for layer, path in found.items() if not path.exists()}
    if missing:
        compute(model, tokenizer, layout, stats, missing, model_name=model_name, progress=progress)
    return found
