"""The shared stages: what the model, data, templates, stats and values rules run, each from its
`Job` (typed settings, execution settings, named files), to artifacts; and which settings each
one counts. The experiments' stages are in `experiments`, the tables' and figures' in `report`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from editscale import artifacts, data, models
from editscale.editing import stats as store
from editscale.settings import Settings, results
from editscale.workflow import devices
from editscale.workflow.job import Job, Stage

log = logging.getLogger(__name__)


MANIFEST = {"spec": str, "folder": str, "n_layers": int, "context_length": int}  # what the model rule records


def load_model(job: Job, device: str | None = None):
    """The job's model on its device; a device this machine lacks is named with its key (a submit host
    may lack the GPU its jobs get, so the config check cannot refuse it)."""
    import socket

    import torch

    model = job.settings.model
    device = device or job.run.device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"model.device = {device}, but {socket.gethostname()} has no CUDA device; run the job "
                           f"where one is (resources.gpus, a GPU partition), or set model.device: cpu")
    device = devices.claim(device, torch.cuda.device_count())  # a bare cuda: the first GPU no running job holds
    return models.load(model.spec, dtype=model.dtype, device=device, layout=model.layout,
                       revision=model.revision)


def prepare_model(job: Job) -> None:
    """Resolve and load the model once (converting a GGUF if needed); record what was loaded."""
    loaded, _, layout = load_model(job, device="cpu")
    spec = job.settings.model.spec
    manifest = {
        "spec": spec,
        "folder": models.resolve(spec),
        "model_type": loaded.config.model_type,
        "n_layers": layout.n_layers(loaded),
        "layout": layout.to_dict(),
        "edited_weight_shape": list(layout.weight(loaded, 0).shape),
        "context_length": models.context_length(loaded),
    }
    artifacts.write_text(yaml.safe_dump(manifest, sort_keys=False), job.output["manifest"])


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


def select_records(job: Job) -> None:
    """The records every experiment edits, refused if any case's prompts do not fit the model's
    context, or if the sources' content is no longer what the output's path names."""
    resolved = resolve_data(results(job.settings.data))
    out = Path(job.output["records"])
    if out.stem != selection_name(resolved):
        raise data.RecordError(f"the data sources changed while the workflow ran: {resolved['resolved']} now give "
                               f"{selection_name(resolved)}, not {out.stem}; run snakemake again")
    entry = data.registry.get(resolved["dataset"])
    records = entry.load(resolved["resolved"], n=resolved["n"], seed=resolved["seed"],
                         unique_subjects=resolved["unique_subjects"], target=resolved["target"])
    manifest = artifacts.read_yaml(job.input["model"], MANIFEST)
    tokenizer = models.load_tokenizer(manifest["folder"])
    check_context(records, tokenizer, manifest["context_length"], prefix_tokens=job.settings.templates.n_tokens)
    log.info("selected %d %s records from %s", len(records), entry.name, resolved["resolved"])
    data.write_records(records, out)


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


def make_templates(job: Job) -> None:
    from editscale.editing.keys import (
        TEMPLATE_RECIPE,
        TEMPLATE_STARTS,
        context_templates,
        save_templates,
    )

    loaded, tokenizer, _ = load_model(job)
    templates = job.settings.templates
    made = context_templates(loaded, tokenizer, seed=templates.seed, n_tokens=templates.n_tokens,
                             top_k=templates.top_k)
    save_templates(made, job.output["templates"], model=job.settings.model.spec, **results(templates),
                   starts=list(TEMPLATE_STARTS), recipe=TEMPLATE_RECIPE)


def compute_stats(job: Job) -> None:
    """C at every layer the config can edit (`job.output`: layer<L> -> path) from one pass."""
    loaded, tokenizer, layout = load_model(job)
    outputs = {int(name.removeprefix("layer")): path for name, path in job.output.items()}
    store.compute(loaded, tokenizer, layout, job.settings.stats, outputs, model_name=job.settings.model.spec)


def value_part(run) -> int:
    """Records a values part holds: `value_chunk` rounded up to whole forwards of `value_batch_size`,
    so saving often never caps the batch a forward sees (chunk 64 at batch 256 saves every 256)."""
    forwards = -(-run.value_chunk // run.value_batch_size)
    return forwards * run.value_batch_size


def compute_values(job: Job) -> None:
    """Keys, v* and residuals of records [start, end) at `layer`, on the unedited model.

    Work goes in parts of `value_part(run)` records, each written atomically to the job's
    `artifacts.Parts`, so a killed job keeps its finished parts (they are used only by the same
    records, layer, templates and settings); the output joins them and the parts are removed.
    """
    import torch

    from editscale.editing.keys import compute_keys, load_templates
    from editscale.editing.value_file import ValueFile
    from editscale.editing.values import compute_values as optimise

    layer, start, end = (int(job.wildcards[k]) for k in ("layer", "start", "end"))
    loaded, tokenizer, layout = load_model(job)
    records = data.read_records(job.input["records"]).iloc[start:end]
    templates = load_templates(job.input["templates"])
    config, run = job.settings.values, job.run
    out = job.output["values"]
    parts = artifacts.Parts(out, job.identity)
    size = value_part(run)
    for offset in range(0, len(records), size):
        chunk = records.iloc[offset : offset + size]
        part = parts / f"{offset:06d}-{chunk.case_id.iloc[0]}-{len(chunk)}.safetensors"
        if part.exists():
            log.info("records %d-%d: kept from an earlier, interrupted run", start + offset, start + offset + len(chunk))
            continue
        facts = chunk.to_dict("records")
        K = compute_keys(loaded, tokenizer, layout, layer, facts, templates)
        V = optimise(loaded, tokenizer, layout, layer, facts, templates, config, batch_size=run.value_batch_size,
                     progress=True)
        ValueFile(torch.tensor(chunk.case_id.to_numpy()), K, V).write(part)
    ValueFile.read(parts.paths("*.safetensors")).write(out, metadata={"layer": layer,
                                                                       "model": job.settings.model.spec,
                                                                       "start": start, "end": end})
    parts.clear()


def _counts_data(s: Settings, _w) -> dict:
    return {"data": resolve_data(results(s.data)), "prompt_tokens": s.templates.n_tokens}


STAGES = {
    "model": Stage(prepare_model, lambda s, w: {"model": results(s.model)}),
    "data": Stage(select_records, _counts_data),
    "templates": Stage(make_templates, lambda s, w: {"model": results(s.model), "templates": results(s.templates)}),
    "stats": Stage(compute_stats, lambda s, w: {"model": results(s.model), "stats": results(s.stats)}),
    "values": Stage(compute_values, lambda s, w: {"model": results(s.model), "values": results(s.values)}),
}
