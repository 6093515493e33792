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

import torch

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


def stats_path(results, spec: str, stats: Stats | str, layer: int) -> Path:
    """C of `layer` for model `spec` under the results folder `results`; `stats` its settings, or the
    store name they give (`stats_id`, as an exported C records it)."""
    name = stats if isinstance(stats, str) else stats_id(stats)
    return Path(results) / models.slug(spec) / "stats" / name / f"layer{layer}.safetensors"


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
                           skip_first_token=stats.skip_first_token, stats_id=stats_id(stats))
    parts.clear()


def cached(model, tokenizer, layout, stats: Stats, results, layers, *, model_name: str,
           progress: bool = True) -> dict[int, Path]:
    """{layer: C's path} in the store under `results`, the missing layers computed once, together."""
    found = {layer: stats_path(results, model_name, stats, layer) for layer in layers}
    missing = {layer: path for layer, path in found.items() if not path.exists()}
    if missing:
        compute(model, tokenizer, layout, stats, missing, model_name=model_name, progress=progress)
    return found


def exported_name(metadata: dict) -> str:
    """An exported C's file name: the model, the layer and `stats_id`, so a folder can hold many."""
    return f"{models.slug(metadata['model'])}-layer{metadata['layer']}-{metadata['stats_id']}.safetensors"


def export(path: str | Path, to: str | Path) -> Path:
    """C at `path` (in a store) copied into the folder `to`, with its provenance (`covariance.write_stats`:
    model, layer, module, corpus digest, tokens, max_length, dtype) and the name of its store folder
    (`stats_id`), all in the file, C's bits unchanged. The copy is checked against its content digest."""
    artifacts.verify(path)
    C, metadata = covariance.load_stats(path)
    metadata.setdefault("stats_id", Path(path).parent.name)  # a C written before the name was kept in it
    out = Path(to) / exported_name(metadata)
    artifacts.write_safetensors({"C": C}, out, metadata=metadata)
    return out


def place(path: str | Path, model, layout, model_name: str, results) -> Path:
    """An exported C put where the workflow and the `Editor` look for it (`stats_path`), after checking
    that it is C of `model_name` (its provenance's model) at a layer `model` has, of that layer's
    shape (`model` may be a `models.skeleton`), and that its store name agrees with its corpus digest.
    Refused, naming what differs, otherwise; an existing C of another content is not overwritten."""
    artifacts.verify(path)
    C, metadata = covariance.load_stats(path)
    missing = {"model", "layer", "source", "tokens", "max_length", "stats_id"} - set(metadata)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)} in its metadata: it is no C that editscale exported; "
                         f"export it with python -m editscale stats export")
    if models.slug(metadata["model"]) != models.slug(model_name):
        raise ValueError(f"{path} is C of {metadata['model']!r}, not of {model_name!r}: compute C for this model "
                         f"(python -m editscale stats compute --model {model_name})")
    layer, n_layers = metadata["layer"], layout.n_layers(model)
    if not 0 <= layer < n_layers:
        raise ValueError(f"{path} is C of layer {layer}; {model_name} has layers 0-{n_layers - 1}")
    d_in = layout.weight(model, layer).shape[1]
    if tuple(C.shape) != (d_in, d_in):
        raise ValueError(f"{path} holds C of shape {tuple(C.shape)}; layer {layer} of {model_name} "
                         f"({layout.module_name(layer)}) takes keys of width {d_in}, so C must be ({d_in}, {d_in})")
    content = hashlib.sha256(metadata["source"].encode()).hexdigest()[:12]
    if content not in metadata["stats_id"].split("-"):
        raise ValueError(f"{path} names its corpus {metadata['stats_id']!r} but was made from {metadata['source']!r} "
                         f"(sha256 {content}): the file was altered; export it again")
    out = stats_path(results, model_name, metadata["stats_id"], layer)
    if out.exists():
        held, _ = covariance.load_stats(out)
        if not torch.equal(held, C):
            raise ValueError(f"{out} already holds a different C under the same name; move it away to replace it")
        return out
    artifacts.write_safetensors({"C": C}, out, metadata=metadata)
    return out
