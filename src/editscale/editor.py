"""Edit a model in a few lines: `Editor.edit(facts)` gives an `Edit`, which applies, reverts,
saves and reloads; `export` writes the edited model as a `from_pretrained` folder.

    model, tok, layout = editscale.models.load("smollm2-135m")
    editor = editscale.Editor(model, tok, algorithm="memit", layers=[3])
    edit = editor.edit([{"prompt": "{} is a citizen of", "subject": "Danielle Darrieux", "target_new": "Japan"}])
    with edit.applied(model):
        ...

The pieces are the workflow's own (keys, values, the prepared solvers, C from the same cached
file the workflow writes), so an edit made here equals the workflow's for the same settings.
Independent edits are computed on the unedited model and never see each other; sequential
editing (`sequential=True`) is explicit, applies each edit as it is made, and keeps the earlier
keys an algorithm remembers (AlphaEdit, ENCORE).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editscale import artifacts, editing
from editscale.algorithms import KeyMemory
from editscale.editing import covariance, keys, values
from editscale.editing import stats as store
from editscale.models.layout import layout_for
from editscale.settings import EditSettings, Library, Settings, Stats, Templates, ValueSettings

log = logging.getLogger(__name__)
APPLIED = "editscale_edits"  # the attribute on a model listing the edits applied to it, in order


def model_name(model) -> str:
    """What an edit records as its model: the spec `models.load` was given, else the folder or hub id."""
    return getattr(model, "editscale_spec", None) or getattr(model.config, "_name_or_path", "") or "unknown"


@dataclass
class Edit:
    """ΔW_L = A_L B_Lᵀ for each edited layer L, and what made it."""

    factors: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (A (d_out, n), B (d_in, n))
    provenance: dict = field(default_factory=dict)  # model, algorithm, settings, C's sha256, the facts

    def delta(self, layer: int) -> torch.Tensor:
        A, B = self.factors[layer]
        return A @ B.T

    def check(self, model) -> None:
        """Refuse a model this edit was not made for, saying what differs."""
        layout = layout_for(model)
        name = model_name(model)
        if name != self.provenance.get("model"):
            raise ValueError(f"this edit was made for model {self.provenance.get('model')!r}, not {name!r}")
        for layer, (A, B) in self.factors.items():
            if layer >= layout.n_layers(model):
                raise ValueError(f"this edit changes layer {layer}; the model has {layout.n_layers(model)} layers")
            shape = tuple(layout.weight(model, layer).shape)
            if shape != (A.shape[0], B.shape[0]):
                raise ValueError(f"this edit's layer {layer} is {A.shape[0]} × {B.shape[0]}; the model's is "
                                 f"{shape[0]} × {shape[1]}")

    def apply(self, model) -> None:
        self.check(model)
        layout = layout_for(model)
        for layer in self.factors:
            editing.apply_delta(model, layout, layer, self.delta(layer))
        model.__dict__.setdefault(APPLIED, []).append(self.provenance)

    def revert(self, model) -> None:
        applied = model.__dict__.get(APPLIED, [])
        if self.provenance not in applied:
            raise ValueError("this edit is not applied to this model; nothing to revert")
        layout = layout_for(model)
        for layer in self.factors:
            editing.revert_delta(model, layout, layer, self.delta(layer))
        applied.remove(self.provenance)

    @contextlib.contextmanager
    def applied(self, model):
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    def save(self, path) -> None:
        tensors = {f"layer{layer}.{name}": t.contiguous() for layer, (A, B) in self.factors.items()
                   for name, t in (("A", A), ("B", B))}
        artifacts.write_safetensors(tensors, path, metadata={"editscale": json.dumps(self.provenance)})

    @staticmethod
    def load(path) -> "Edit":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            provenance = json.loads(f.metadata().get("editscale", "null") or "null")
            if provenance is None:
                raise ValueError(f"{path} is not an edit written by Edit.save (no editscale metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layers = sorted({int(k.split(".")[0].removeprefix("layer")) for k in tensors})
        return Edit({layer: (tensors[f"layer{layer}.A"], tensors[f"layer{layer}.B"]) for layer in layers}, provenance)


class Editor:
    """Edits facts into `model` with one algorithm at one layer or a window of layers (MEMIT's
    spread, `editing.window`), each layer's C and solver and the templates prepared once.

    `stats` is C itself (d_in × d_in; one layer), a file the workflow wrote (one layer), a dict of
    either per layer, or None: then each layer's C is read from, or computed once into, the
    workflow's own cache (`results/<model>/stats/...`, the same files and provenance), from
    `stats_settings`' corpus, in one pass, with a progress bar.
    """

    def __init__(self, model, tokenizer, layout=None, *, algorithm: str = Library.algorithm, layers=Library.layers,
                 stats=None, edit: EditSettings = EditSettings(), value_settings: ValueSettings = ValueSettings(),
                 templates: Templates = Templates(), stats_settings: Stats = Stats(),
                 results_dir: str = Settings.results,
                 progress: bool = True):
        layers = sorted({int(layers)} if isinstance(layers, int) else {int(layer) for layer in layers})
        self.model, self.tokenizer = model, tokenizer
        self.layout = layout or layout_for(model)
        if not layers or not all(0 <= layer < self.layout.n_layers(model) for layer in layers):
            raise ValueError(f"layers {layers} must be one or more of the model's {self.layout.n_layers(model)} "
                             f"layers (0 to {self.layout.n_layers(model) - 1})")
        if algorithm == "rome" and len(layers) > 1:
            raise ValueError(f"ROME edits one layer; layers={layers} is a window (use memit, emmet, alphaedit or "
                             f"encore)")
        self.layers, self.layer = layers, layers[-1]  # v* is optimised at the window's last layer
        self.config = editing.EditConfig(algorithm, self.layer, edit=edit, values=value_settings)
        self.progress = progress
        self.templates = keys.context_templates(model, tokenizer, seed=templates.seed, n_tokens=templates.n_tokens,
                                                top_k=templates.top_k)
        device = next(model.parameters()).device
        stats = self._stats(stats, stats_settings, results_dir)
        self.stats_source = {layer: digest for layer, (_, digest) in stats.items()}
        self.solvers = {layer: editing.prepare(self.config, C.to(device)) for layer, (C, _) in stats.items()}
        self.memories = {layer: KeyMemory() for layer in layers}  # earlier keys of sequential edits, per layer
        self.unedited = self._weights()
        self.provenance = {"model": model_name(model), "algorithm": algorithm, "layers": layers,
                           **{k: v for k, v in self.config.counted().items() if k in ("edit", "values")},
                           "templates": self.templates,
                           "C_sha256": self.stats_source[layers[0]] if len(layers) == 1 else
                           {str(layer): digest for layer, digest in self.stats_source.items()}}

    def _weights(self) -> dict:
        return {layer: self.layout.weight(self.model, layer).detach().clone() for layer in self.layers}

    def _stats(self, stats, settings: Stats, results_dir: str) -> dict:
        """{layer: (C, its sha256)} for every window layer."""
        if isinstance(stats, (torch.Tensor, str, Path)):
            if len(self.layers) > 1:
                raise ValueError(f"one C for a window of layers {self.layers}; give a dict {{layer: C or path}}, or "
                                 f"None to use the workflow's cache")
            stats = {self.layers[0]: stats}
        if stats is None:
            stats = store.cached(self.model, self.tokenizer, self.layout, settings, results_dir, self.layers,
                                 model_name=model_name(self.model), progress=self.progress)
        if set(stats) != set(self.layers):
            raise ValueError(f"stats for layers {sorted(stats)}, but the editor edits layers {self.layers}")
        out = {}
        for layer, given in stats.items():
            if isinstance(given, torch.Tensor):
                out[layer] = (given, _sha256(given))
            else:
                out[layer] = (covariance.load_stats(given)[0], artifacts.sha256(given))
        return out

    def edit(self, facts, *, sequential: bool = False) -> Edit:
        """An Edit for `facts` (mappings with prompt, subject, target_new; the prompt holds "{}" or
        the subject). Independent by default: solved on the unedited model, not applied. With
        `sequential=True` it is solved on the model as this editor's earlier sequential edits
        left it, applied at once, and its keys are kept for the next; independent edits after
        it start from there too."""
        facts = [check_fact(self.tokenizer, fact, i) for i, fact in enumerate(facts)]
        if not facts:
            raise ValueError("no facts to edit")
        editing.check_conflicts([facts])
        for layer, weight in self.unedited.items():
            now = self.layout.weight(self.model, layer)
            if not sequential and not torch.equal(now, weight.to(now.device)):
                raise ValueError(f"layer {layer} of the model has changed since this editor was made (an edit is "
                                 f"applied?): revert it for an independent edit, or pass sequential=True to build "
                                 f"on it")
        values._Plan(self.tokenizer, facts, self.templates, self.config.values.kl_prompt)  # refuses merging targets
        memories = self.memories if sequential else None
        batches = editing.edit_window(self.model, self.tokenizer, self.layout, self.config, self.layers, facts,
                                      self.templates, self.solvers, memories=memories)
        diagnostics = {str(layer): {k: v for k, v in batch.diagnostics.items() if isinstance(v, (int, float, str))}
                       for layer, batch in batches.items()}
        edit = Edit({layer: (batch.A.float().cpu(), batch.B.float().cpu()) for layer, batch in batches.items()},
                    {**self.provenance, "sequential": sequential, "facts": [_plain(f) for f in facts],
                     "diagnostics": diagnostics[str(self.layer)] if len(batches) == 1 else diagnostics})
        if sequential:
            for layer, batch in batches.items():
                self.memories[layer].absorb(batch.keys, batch.TK)
            edit.apply(self.model)
            self.unedited = self._weights()
        return edit


def check_fact(tokenizer, fact, index: int) -> dict:
    """The fact with "{}" in its prompt, or a ValueError naming it: no subject, no "{}" nor the
    subject in the prompt, an empty target. Token-level problems (a subject with no token, a
    target that merges with it) are `values._Plan`'s to find, which `Editor.edit` builds first."""
    if not isinstance(fact, dict):
        raise ValueError(f"fact {index} is a {type(fact).__name__}; give a dict with prompt, subject, target_new")
    missing = [k for k in ("prompt", "subject", "target_new") if not str(fact.get(k) or "").strip()]
    if missing:
        raise ValueError(f"fact {index} ({fact!r}) has no {', '.join(missing)}")
    prompt, subject = fact["prompt"], fact["subject"]
    if "{}" not in prompt:
        if subject not in prompt:
            raise ValueError(f"fact {index}: prompt {prompt!r} holds neither '{{}}' nor the subject {subject!r}")
        prompt = prompt.replace(subject, "{}", 1)
    if "\n" in fact["target_new"]:
        raise ValueError(f"fact {index}: target_new {fact['target_new']!r} spans lines")
    return {**fact, "prompt": prompt, "case_id": fact.get("case_id", index)}


def export(model, tokenizer, folder) -> Path:
    """The model as it is now (edits applied) as a folder `from_pretrained` loads (safetensors),
    with `editscale.json` listing the edits applied to it, in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    artifacts.write_text(json.dumps({"base_model": model_name(model), "edits": model.__dict__.get(APPLIED, [])},
                                    indent=1), folder / "editscale.json")
    return folder


def _sha256(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()


def _plain(fact: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in fact.items()
            if isinstance(v, (str, int, float, bool)) or hasattr(v, "item")}
