"""Workflow stages: what each Snakemake rule runs, from its params (result settings, as plain
dicts), the execution settings (`settings.Execution`) and its files, to artifacts.

Scripts under `workflow/scripts/` only pass Snakemake's params, inputs and outputs here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import yaml

from editscale import artifacts, data, models, settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def logged(log_path: str | Path, config: dict):
    """Send this library's log records to the rule's log file (and stderr) for the block, with
    torch using the job's threads (parallel jobs must not oversubscribe the cores). Yields the
    execution settings parsed from the workflow config."""
    run = settings.Execution.of(settings.parse(config))
    import torch

    torch.set_num_threads(run.threads)
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
        yield run
        root.info("done in %.1f s", time.perf_counter() - start)
    except Exception:
        root.exception("stage failed after %.1f s", time.perf_counter() - start)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def load_model(model: dict, run: settings.Execution):
    return models.load(model["spec"], dtype=model["dtype"], device=run.device, layout=model["layout"],
                       revision=model["revision"])


def prepare_model(*, model: dict, manifest_path: str | Path) -> None:
    """Resolve and load the model once (converting a GGUF if needed); record what was loaded."""
    loaded, _, layout = models.load(model["spec"], dtype=model["dtype"], device="cpu", layout=model["layout"],
                                    revision=model["revision"])
    manifest = {
        "spec": model["spec"],
        "folder": models.resolve(model["spec"]),
        "model_type": loaded.config.model_type,
        "n_layers": layout.n_layers(loaded),
        "layout": layout.to_dict(),
        "edited_weight_shape": list(layout.weight(loaded, 0).shape),
        "context_length": context_length(loaded),
    }
    artifacts.write_text(yaml.safe_dump(manifest, sort_keys=False), manifest_path)


def resolve_data(data_settings: dict) -> dict:
    """The data params with `auto` resolved once, on this machine: the dataset's default target and
    the sources it names, with their content's fingerprint. The data rule runs with exactly these,
    and the selection's path names them, so other data never lands under the same path."""
    entry = data.registry.get(data_settings["dataset"])
    sources = data.registry.resolve_sources(entry.name, data_settings["source"])
    target = entry.targets[0] if data_settings["target"] == "auto" else data_settings["target"]
    return {**data_settings, "target": target, "resolved": [str(source) for source in sources],
            "fingerprint": data.registry.fingerprint(sources)}


def selection_name(data_settings: dict) -> str:
    """The record selection's part of artifact paths (`data.registry.selection_name`)."""
    resolved = data_settings if "fingerprint" in data_settings else resolve_data(data_settings)
    return data.registry.selection_name(resolved, resolved["fingerprint"])


def select_records(*, data_settings: dict, model_manifest, templates: dict, out_path: str | Path) -> None:
    """The records every experiment edits, refused if any case's prompts do not fit the model's context."""
    resolved = data_settings if "fingerprint" in data_settings else resolve_data(data_settings)
    entry = data.registry.get(resolved["dataset"])
    records = entry.load(resolved["resolved"], n=resolved["n"], seed=resolved["seed"],
                         unique_subjects=resolved["unique_subjects"], target=resolved["target"])
    manifest = yaml.safe_load(Path(model_manifest).read_text())
    tokenizer = models.load_tokenizer(manifest["folder"])
    check_context(records, tokenizer, manifest["context_length"], prefix_tokens=templates["n_tokens"])
    log.info("selected %d %s records from %s", len(records), entry.name, resolved["resolved"])
    data.write_records(records, out_path)


def check_context(records, tokenizer, context_length: int, prefix_tokens: int) -> None:
    """Every scored prompt with its answer, after a context template of `prefix_tokens`, must fit
    the model's context; the first case that does not is named."""
    from editscale.evaluation.metrics import prompt_table

    table = prompt_table(records)
    lengths = [len(tokenizer(prompt + continuation)["input_ids"]) + prefix_tokens
               for prompt, continuation in zip(table.prompt, table.continuation)]
    table = table.assign(tokens=lengths)
    over = table[table.tokens > context_length]
    if len(over):
        row = over.iloc[0]
        raise data.RecordError(f"case_id {row.case_id}: its {row.prompt_kind} prompt {row.prompt[:60]!r}… is "
                               f"{row.tokens} tokens with its answer and a context template, beyond the model's "
                               f"context of {context_length}; drop the case or shorten the prompt "
                               f"({len(set(over.case_id))} cases are too long)")


def make_templates(*, model: dict, templates: dict, run: settings.Execution, out_path) -> None:
    from editscale.editing.keys import (
        TEMPLATE_RECIPE,
        TEMPLATE_STARTS,
        context_templates,
        save_templates,
    )

    loaded, tokenizer, _ = load_model(model, run)
    made = context_templates(loaded, tokenizer, seed=templates["seed"], n_tokens=templates["n_tokens"],
                             top_k=templates["top_k"])
    save_templates(made, out_path, model=model["spec"], **templates, starts=list(TEMPLATE_STARTS),
                   recipe=TEMPLATE_RECIPE)


def stats_id(stats: settings.Stats) -> str:
    """The part of C's path that names every setting C depends on (the workflow's and `Editor`'s),
    with the content `auto` resolved to here: the corpus file's sha256, or the dataset spec's."""
    from editscale.data import corpus

    name = "auto" if stats.corpus == "auto" else models.slug(str(stats.corpus))
    content = hashlib.sha256(corpus.fingerprint(corpus_source(stats.corpus)).encode()).hexdigest()[:12]
    return (f"{name}-{content}-{stats.max_tokens}tok-len{stats.max_length}"
            f"{'-nofirst' if stats.skip_first_token else ''}")


def stats_path(results, spec: str, stats: settings.Stats, layer: int) -> Path:
    """Where the workflow keeps C of `layer` for model `spec`: the Editor reads and writes the same file."""
    return Path(results) / models.slug(spec) / "stats" / stats_id(stats) / f"layer{layer}.safetensors"


def corpus_source(source):
    """`auto`: the offline Wikipedia articles when present, else Wikipedia through `datasets`."""
    if source != "auto":
        return source
    from editscale import paths

    shared = paths.shared_data()
    if shared is not None:
        return shared / "corpus" / "wikipedia-articles.txt"
    return {"hf": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "field": "text"}


def compute_stats(*, model: dict, stats_settings: dict, run: settings.Execution, outputs: dict) -> None:
    """C at every layer in `outputs` ({layer: path}) from one pass that stops at the deepest,
    resumable through a partial-sums file beside the first output."""
    from editscale.data import corpus
    from editscale.editing import covariance

    loaded, tokenizer, layout = load_model(model, run)
    source = corpus_source(stats_settings["corpus"])
    source_id = corpus.fingerprint(source)
    max_length = stats_max_length(loaded, stats_settings["max_length"])
    skip_first = stats_settings["skip_first_token"]
    first = Path(outputs[min(outputs)])
    moments = covariance.second_moments(
        loaded, tokenizer, layout, list(outputs), corpus.iter_texts(source), max_tokens=stats_settings["max_tokens"],
        max_length=max_length, skip_first_token=skip_first, batch_tokens=run.stats_batch_tokens,
        checkpoint=first.parent / f".{first.parent.name}.partial.safetensors", source_id=source_id,
    )
    covariance.write_stats(moments, outputs, model_name=model["spec"], source_id=source_id, dtype=model["dtype"],
                      max_length=max_length, skip_first_token=skip_first)


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions"))


def stats_max_length(model, setting) -> int:
    """`auto`: the model's context length, as the reference truncates; a number caps it."""
    context = context_length(model)
    return context if setting == "auto" else min(int(setting), context)


def compute_values(*, model: dict, value_settings: dict, run: settings.Execution, records_path, templates_path,
                   layer: int, start: int, end: int, out_path) -> None:
    """Keys, v* and residuals of records [start, end) at `layer`, on the unedited model.

    Work goes in chunks of `run.value_chunk` records, each written atomically beside the output,
    so a killed job keeps its finished chunks (they are used only by the same records, layer,
    templates and settings); the output joins them and the chunks are removed.
    """
    import torch

    from editscale.editing.keys import compute_keys, load_templates
    from editscale.editing.values import compute_values as optimise

    loaded, tokenizer, layout = load_model(model, run)
    records = data.read_records(records_path).iloc[start:end]
    templates = load_templates(templates_path)
    config = settings.ValueSettings(**value_settings)
    out_path = Path(out_path)
    parts_dir = out_path.parent / f".{out_path.stem}.parts"
    identity = hashlib.sha256(json.dumps([model, value_settings, layer, templates, records.to_json()],
                                         sort_keys=True, default=str).encode()).hexdigest()[:16]
    parts = []
    for offset in range(0, len(records), run.value_chunk):
        chunk = records.iloc[offset : offset + run.value_chunk]
        part = parts_dir / f"{identity}-{chunk.case_id.iloc[0]}-{len(chunk)}.safetensors"
        if part.exists():
            log.info("records %d-%d: kept from an earlier, interrupted run", start + offset, start + offset + len(chunk))
        else:
            facts = chunk.to_dict("records")
            K = compute_keys(loaded, tokenizer, layout, layer, facts, templates)
            V = optimise(loaded, tokenizer, layout, layer, facts, templates, config, batch_size=run.value_batch_size,
                         progress=True)
            artifacts.write_safetensors({"case_id": torch.tensor(chunk.case_id.to_numpy()), "keys": K,
                                         "v_star": V.v_star, "residual": V.residual, "loss": V.loss, "steps": V.steps,
                                         "converged": V.converged}, part)
        parts.append(part)
    joined = read_values(parts)
    artifacts.write_safetensors(joined, out_path, metadata={"layer": layer, "model": model["spec"], "start": start,
                                                           "end": end})
    shutil.rmtree(parts_dir)  # with any temporary file a killed write left behind


def read_values(paths_: list) -> dict:
    """Value files (or chunks) concatenated in the order given, i.e. record order."""
    import torch

    parts = [artifacts.read_tensors(p) for p in paths_]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

