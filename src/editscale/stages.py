"""Workflow stages: what each Snakemake rule runs, from plain config values to artifacts.

Scripts under `scripts/` only pass Snakemake's params, inputs and outputs here.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import yaml

from . import artifacts, data, models


@contextlib.contextmanager
def logged(log_path: str | Path, threads: int | None = None):
    """Send this library's log records to the rule's log file (and stderr) for the block,
    with torch using the job's `threads` (parallel jobs must not oversubscribe the cores)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("editscale")
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    start = time.perf_counter()
    try:
        yield
        root.info("done in %.1f s", time.perf_counter() - start)
    except Exception:
        root.exception("stage failed after %.1f s", time.perf_counter() - start)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def prepare_model(model_config: dict, manifest_path: str | Path) -> None:
    """Resolve and load the model once (converting a GGUF if needed); record what was loaded."""
    spec = model_config["spec"]
    model, _, layout = models.load(spec, dtype=model_config.get("dtype", "float32"), device="cpu",
                                   layout=model_config.get("layout"))
    manifest = {
        "spec": spec,
        "folder": models.resolve(spec),
        "model_type": model.config.model_type,
        "n_layers": layout.n_layers(model),
        "layout": layout.to_dict(),
        "edited_weight_shape": list(layout.weight(model, 0).shape),
    }
    artifacts.write_text(yaml.safe_dump(manifest, sort_keys=False), manifest_path)


def counterfact_sources(spec):
    """Config sources with `auto` (full-format records) and `auto-easyedit` resolved."""
    from . import paths

    resolved = []
    for source in spec if isinstance(spec, list) else [spec]:
        if source == "auto":
            source = data.default_sources()
        elif source == "auto-easyedit":
            shared = paths.shared_data()
            source = shared / "counterfact" / "easyedit" if shared is not None else data.OFFICIAL_URL
        resolved.append(source)
    return resolved


def selection_name(data_config: dict) -> str:
    """The record selection's part of artifact paths: size, seed, and where the records came from."""
    import hashlib
    import json

    spec = data_config["counterfact"]
    tag = {"auto": "full", "auto-easyedit": "easyedit"}.get(spec) if isinstance(spec, str) else None
    tag = tag or hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:8]
    dups = "" if data_config.get("unique_subjects", True) else "-dups"
    return f"{tag}-n{data_config['n']}-seed{data_config.get('seed', 0)}{dups}"


def select_records(data_config: dict, out_path: str | Path) -> None:
    sources = counterfact_sources(data_config["counterfact"])
    records = data.load_counterfact(
        sources, n=data_config.get("n"), seed=data_config.get("seed", 0),
        unique_subjects=data_config.get("unique_subjects", True),
    )
    logging.getLogger(__name__).info("selected %d records from %s", len(records), sources)
    data.write_records(records, out_path)


def _load(model_config: dict):
    return models.load(model_config["spec"], dtype=model_config.get("dtype", "float32"),
                       device=model_config.get("device", "cpu"), layout=model_config.get("layout"))


def make_templates(model_config: dict, template_config: dict, out_path) -> None:
    from .keys import TEMPLATE_RECIPE, TEMPLATE_STARTS, context_templates, save_templates

    model, tokenizer, _ = _load(model_config)
    templates = context_templates(model, tokenizer, seed=template_config.get("seed", 0),
                                  n_tokens=template_config.get("n_tokens", 10), top_k=template_config.get("top_k", 5))
    save_templates(templates, out_path, model=model_config["spec"], **template_config, starts=list(TEMPLATE_STARTS),
                   recipe=TEMPLATE_RECIPE)


def corpus_source(source):
    """`auto`: the offline Wikipedia articles when present, else Wikipedia through `datasets`."""
    if source != "auto":
        return source
    from . import paths

    shared = paths.shared_data()
    if shared is not None:
        return shared / "corpus" / "wikipedia-articles.txt"
    return {"hf": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "field": "text"}


def compute_stats(model_config: dict, stats_config: dict, layer: int, out_path) -> None:
    """C at `layer`, resumable through a partial-sums file beside the output."""
    from . import corpus, stats

    model, tokenizer, layout = _load(model_config)
    source = corpus_source(stats_config.get("corpus", "auto"))
    source_id = corpus.fingerprint(source)
    max_length = stats_max_length(model, stats_config.get("max_length", "auto"))
    skip_first = stats_config.get("skip_first_token", False)
    moments = stats.second_moments(
        model, tokenizer, layout, [layer], corpus.iter_texts(source), max_tokens=stats_config.get("max_tokens"),
        max_length=max_length, skip_first_token=skip_first, batch_tokens=stats_config.get("batch_tokens", 8192),
        checkpoint=Path(str(out_path) + ".partial"), source_id=source_id,
    )
    stats.write_stats(moments, {layer: out_path}, model_name=model_config["spec"], source_id=source_id,
                      dtype=model_config.get("dtype", "float32"), max_length=max_length, skip_first_token=skip_first)


def stats_max_length(model, setting) -> int:
    """`auto`: the model's context length, as the reference truncates; a number caps it."""
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions")
    return int(context) if setting == "auto" else min(int(setting), int(context))


def compute_value_chunk(model_config: dict, value_config: dict, records_path, templates_path, layer: int,
                        chunk: int, chunk_size: int, out_path) -> None:
    """Keys, v* and residuals of records [chunk·size, (chunk+1)·size) at `layer`, on the unedited model."""
    from .keys import compute_keys, load_templates
    from .values import ValueConfig, compute_values

    model, tokenizer, layout = _load(model_config)
    records = data.read_records(records_path).iloc[chunk * chunk_size : (chunk + 1) * chunk_size]
    facts = records.to_dict("records")
    templates = load_templates(templates_path)
    options = {k: v for k, v in value_config.items() if k in ValueConfig.__dataclass_fields__}
    K = compute_keys(model, tokenizer, layout, layer, facts, templates)
    V = compute_values(model, tokenizer, layout, layer, facts, templates, ValueConfig(**options),
                       batch_size=value_config.get("batch_size", 16), progress=True)
    import torch

    tensors = {"case_id": torch.tensor(records.case_id.to_numpy()), "keys": K, "v_star": V.v_star,
               "residual": V.residual, "loss": V.loss, "steps": V.steps, "converged": V.converged}
    artifacts.write_safetensors(tensors, out_path, metadata={"layer": layer, "model": model_config["spec"]})


def read_value_chunks(paths_: list) -> dict:
    """The value chunks of one layer, concatenated in record order."""
    import torch
    from safetensors.torch import load_file

    parts = [load_file(str(p)) for p in paths_]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
