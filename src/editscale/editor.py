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
editing (`sequential=True`) is explicit, applies each edit as it is made, and keeps
the state an algorithm carries (earlier keys, a running inverse, a projector).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editscale import algorithms, artifacts, domains, editing, presets, settings
from editscale.data.records import check_edit
from editscale.editing import covariance, keys, nas, values
from editscale.editing import stats as store
from editscale.models.layout import layout_for
from editscale.settings import EditSettings, Library, Settings, Stats, Templates, ValueSettings

log = logging.getLogger(__name__)
APPLIED = "editscale_edits"  # the attribute on a model listing the edits applied to it, in order
_STACK = "editscale_applied"  # the applied Edits themselves, each with the weights it was applied to


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

    @property
    def id(self) -> str:
        """What makes this edit itself: its factors' bytes and its provenance (a saved and reloaded
        copy is the same edit)."""
        digest = hashlib.sha256(json.dumps(self.provenance, sort_keys=True, default=str).encode())
        for layer in sorted(self.factors):
            for t in self.factors[layer]:
                digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def apply(self, model) -> None:
        """W_L += ΔW_L at every edited layer, keeping a copy of each W_L as it was, so `revert` restores
        it bit for bit (memory: one copy of each edited layer's weight per applied edit, e.g. 3.5 MB a
        layer of SmolLM2, 117 MB of Llama-3-8B's in bf16). An edit is applied at most once."""
        self.check(model)
        stack = model.__dict__.setdefault(_STACK, [])
        if any(applied.id == self.id for applied, _ in stack):
            raise ValueError("this edit is already applied to this model; applying it again would add its ΔW "
                             "twice: revert it first")
        for layer in self.factors:  # all or nothing: never a partly applied edit
            if not torch.isfinite(self.delta(layer)).all():
                raise ValueError(f"this edit's ΔW at layer {layer} is not finite; it is not applied")
        layout = layout_for(model)
        before = editing.weights(model, layout, self.factors)
        for layer in self.factors:
            editing.apply_delta(model, layout, layer, self.delta(layer))
        stack.append((self, before))
        model.__dict__.setdefault(APPLIED, []).append(self.provenance)

    def revert(self, model) -> None:
        """Restore the weights as if this edit had never been applied, bit for bit: every layer it or a
        later edit touched goes back to its copy from before the first of them, and the later edits
        are applied again, in order."""
        stack = model.__dict__.get(_STACK, [])
        at = next((i for i, (applied, _) in enumerate(stack) if applied.id == self.id), None)
        if at is None:
            raise ValueError("this edit is not applied to this model; nothing to revert")
        layout = layout_for(model)
        original = {}
        for _, before in stack[at:]:
            for layer, weight in before.items():
                original.setdefault(layer, weight)
        editing.put_weights(model, layout, original)
        stack.pop(at)
        model.__dict__[APPLIED].pop(at)
        later = stack[at:]
        del stack[at:]
        del model.__dict__[APPLIED][at:]
        for edit, _ in later:
            edit.apply(model)

    @contextlib.contextmanager
    def applied(self, model):
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    def save(self, path) -> None:
        """The factors as `layer<L>.A`, `layer<L>.B`, the provenance as JSON, and `id` (a sha256 over
        both) that `load` checks, so a changed file is never applied unnoticed."""
        tensors = {f"layer{layer}.{name}": t.contiguous() for layer, (A, B) in self.factors.items()
                   for name, t in (("A", A), ("B", B))}
        artifacts.write_safetensors(tensors, path, metadata={"editscale": json.dumps(self.provenance),
                                                             "editscale.id": self.id})

    @staticmethod
    def load(path) -> "Edit":
        """The edit `Edit.save` wrote to `path`, checked: its tensor names, dtypes and shapes, its layers
        against its provenance, and its sha256 against its tensors and provenance. A ValueError names
        the file, the tensor or key, and the fix."""
        edit, stored = Edit._read(path)
        if stored is None:
            raise ValueError(f"{path} carries no sha256 (written before edits were signed, or its metadata was "
                             f"rewritten): if you trust it, sign it with Edit.resign({str(path)!r})")
        if stored != edit.id:
            raise ValueError(f"{path}: its tensors or provenance are not what Edit.save wrote (sha256 {edit.id[:12]}…, "
                             f"recorded {str(stored)[:12]}…): it was changed since. Make it again, or, if you "
                             f"changed it on purpose, sign it with Edit.resign({str(path)!r})")
        return edit

    @staticmethod
    def resign(path) -> "Edit":
        """The one way to use a hand-edited edit: its structure checked as `load` checks it, then written
        back with the sha256 of what it now holds. Logged, since the edit is no longer what made it."""
        edit, _ = Edit._read(path)
        log.warning("re-signing %s: it is used as it now is, not as its provenance made it", path)
        edit.save(path)
        return edit

    @staticmethod
    def _read(path) -> tuple["Edit", str | None]:
        """The edit in `path` with its structure checked, and the sha256 it records (None if none)."""
        import re

        from safetensors import safe_open

        if not Path(path).is_file():
            raise FileNotFoundError(f"no edit at {path}; write one with Edit.save or python -m editscale edit --out")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own types, none naming the file
            raise ValueError(f"{path} cannot be read as an edit ({type(err).__name__}: {err}): it is cut short, "
                             f"empty or not a safetensors file; write it again with Edit.save") from err
        try:
            provenance = json.loads(metadata.get("editscale", "null") or "null")
        except ValueError as err:
            raise ValueError(f"{path}: its 'editscale' metadata is not JSON ({err}); write it again with Edit.save")
        if provenance is None:
            raise ValueError(f"{path} is not an edit written by Edit.save (no editscale metadata)")
        if not isinstance(provenance, dict):
            raise ValueError(f"{path}: its 'editscale' metadata is a {type(provenance).__name__}, not the provenance "
                             f"object Edit.save writes; write it again with Edit.save")
        pairs: dict[int, dict] = {}
        for name, t in tensors.items():
            found = re.fullmatch(r"layer(\d+)\.([AB])", name)
            if not found:
                raise ValueError(f"{path}: tensor {name!r} is not a factor (layer<L>.A or layer<L>.B, L ≥ 0)")
            if t.dtype not in (torch.float32, torch.float64, torch.bfloat16) or t.dim() != 2:
                raise ValueError(f"{path}: tensor {name!r} is {t.dim()}-d {t.dtype}; a factor is a 2-d float32, "
                                 f"float64 or bfloat16 matrix")
            pairs.setdefault(int(found[1]), {})[found[2]] = t
        for layer, pair in sorted(pairs.items()):
            if set(pair) != {"A", "B"} or pair["A"].shape[1] != pair["B"].shape[1]:
                raise ValueError(f"{path}: layer {layer} needs layer{layer}.A (d_out × n) and layer{layer}.B "
                                 f"(d_in × n) of equal width n; it has "
                                 f"{', '.join(f'{k} {tuple(v.shape)}' for k, v in sorted(pair.items()))}")
        if not pairs:
            raise ValueError(f"{path} holds no factors (layer<L>.A and layer<L>.B); write it again with Edit.save")
        recorded = provenance.get("layers")
        if recorded is not None and sorted(map(int, [recorded] if isinstance(recorded, int) else recorded)) \
                != sorted(pairs):
            raise ValueError(f"{path}: its factors change layers {sorted(pairs)}, its provenance says {recorded}")
        stored = metadata.get("editscale.id")
        return Edit({layer: (pair["A"], pair["B"]) for layer, pair in pairs.items()}, provenance), stored


class Editor:
    """Edits facts into `model` with one algorithm at one layer or a window of layers (MEMIT's
    spread, `editing.window`), each layer's C and solver and the templates prepared once.

    `stats` is C itself (d_in × d_in; one layer), a file the workflow wrote (one layer), a dict of
    either per layer, or None: then each layer's C is read from, or computed once into, the
    workflow's own cache (`results/<model>/stats/...`, the same files and provenance), from
    `stats_settings`' corpus, in one pass, with a progress bar.

    An algorithm with NAS (`memit+nas`) rescales every value to the anchor μ (`editing.nas`): `anchor`
    if given, else measured once, on the facts of the first edit, while the model is unedited.

    `preset` ("llama3-8b", `editscale.presets`) supplies the layout, layers, edit, value and C settings
    of a model the references have run; any of them given here overrides it. A model of another
    architecture than the preset's is refused.
    """

    def __init__(self, model, tokenizer, layout=None, *, algorithm: str = Library.algorithm, layers=None,
                 stats=None, edit: EditSettings | None = None, value_settings: ValueSettings | None = None,
                 templates: Templates = Templates(), stats_settings: Stats | None = None,
                 results_dir: str = Settings.results, anchor: float | None = None, preset: str | None = None,
                 progress: bool = True):
        given = settings.parse({"model": {"preset": preset}} if preset else {})  # the preset's, or the defaults
        if preset and getattr(model.config, "model_type", None) != presets.get(preset).architecture:
            raise ValueError(f"preset {preset} is for {presets.get(preset).architecture} models; this model is "
                             f"{getattr(model.config, 'model_type', None)!r}")
        layers = layers if layers is not None else (given.layer if preset else Library.layers)
        edit, value_settings = edit or given.edit, value_settings or given.values
        stats_settings = stats_settings or given.stats
        layers = sorted({int(layers)} if isinstance(layers, int) else {int(layer) for layer in layers})
        self.model, self.tokenizer = model, tokenizer
        self.layout = layout or layout_for(model, given.model.layout)
        if not layers or not all(0 <= layer < self.layout.n_layers(model) for layer in layers):
            raise ValueError(f"layers {layers} must be one or more of the model's {self.layout.n_layers(model)} "
                             f"layers (0 to {self.layout.n_layers(model) - 1})")
        if not algorithms.get(algorithm).window and len(layers) > 1:
            spreads = ", ".join(a.name for a in algorithms.ALGORITHMS.values() if a.window)
            raise ValueError(f"{algorithm} edits one layer; layers={layers} is a window (use {spreads})")
        self.layers, self.layer = layers, layers[-1]  # v* is optimised at the window's last layer
        outside = [p for prefix, section in (("edit", edit), ("value_settings", value_settings), ("templates", templates),
                                             ("stats_settings", stats_settings)) for p in domains.problems(section, prefix)]
        if outside:
            raise ValueError("; ".join(outside))
        self.config = editing.EditConfig(algorithm, self.layer, edit=edit, values=value_settings)
        self.progress, self.anchor = progress, anchor
        self.templates = keys.context_templates(model, tokenizer, seed=templates.seed, n_tokens=templates.n_tokens,
                                                top_k=templates.top_k)
        device = next(model.parameters()).device
        stats = self._stats(stats, stats_settings, results_dir)
        self.stats_source = {layer: digest for layer, (_, digest) in stats.items()}
        self.solvers = {layer: editing.prepare(self.config, C.to(device)) for layer, (C, _) in stats.items()}
        # the state sequential edits carry, per layer (earlier keys, a running inverse, a projector), for the
        # algorithms that have one: MEMIT and EMMET forget earlier edits, so they get none
        self.memories = {layer: solver.memory() for layer, solver in self.solvers.items()}
        self.unedited = self._weights()
        self.provenance = {"model": model_name(model), "algorithm": algorithm, "layers": layers,
                           **{k: v for k, v in self.config.counted().items() if k in ("edit", "values")},
                           "templates": self.templates,
                           "C_sha256": self.stats_source[layers[0]] if len(layers) == 1 else
                           {str(layer): digest for layer, digest in self.stats_source.items()},
                           **({"nas_anchor": anchor} if anchor is not None else {})}

    def _weights(self) -> dict:
        return editing.weights(self.model, self.layout, self.layers)

    def _stats(self, stats, settings: Stats, results_dir: str) -> dict:
        """{layer: (C, its sha256)} for every window layer."""
        if stats is not None and not isinstance(stats, dict):  # one C (checked below, per layer)
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
                C, digest, what = given, _sha256(given), "the C given"
            elif isinstance(given, (str, Path)):
                C, digest, what = covariance.load_stats(given)[0], artifacts.sha256(given), str(given)
            else:
                raise TypeError(f"stats: {type(given).__name__} given for layer {layer}; give a torch.Tensor (a numpy "
                                f"array: torch.from_numpy(C)) or a path to a C file")
            if not C.is_floating_point():
                raise ValueError(f"stats: {what} for layer {layer} is {C.dtype}; C is a floating-point matrix")
            d_in = self.layout.weight(self.model, layer).shape[1]
            if tuple(C.shape) != (d_in, d_in):
                raise ValueError(f"stats: {what} for layer {layer} is {' × '.join(map(str, C.shape))}; this model's "
                                 f"layer {layer} needs C of {d_in} × {d_in} (the second moment of its keys): C of "
                                 f"another model or module? Give stats=None to compute it")
            if not torch.isfinite(C).all():
                raise ValueError(f"stats: {what} for layer {layer} holds non-finite values (an empty corpus?); "
                                 f"give stats=None to compute it again")
            # C = E[k kᵀ] is symmetric; the solvers read one triangle, so an asymmetric C would be used as half of it.
            asymmetry = float((C - C.T).abs().max()) / max(float(C.abs().max()), 1e-30)
            if asymmetry > 1e-5:
                raise ValueError(f"stats: {what} for layer {layer} is not symmetric (largest |C − Cᵀ| is {asymmetry:.1e} "
                                 f"of its largest entry); C is the second moment E[k kᵀ]: give (C + C.T) / 2 if "
                                 f"that is what you meant")
            out[layer] = (C, digest)
        return out

    def edit(self, facts, *, sequential: bool = False) -> Edit:
        """An Edit for `facts` (mappings with prompt, subject, target_new; the prompt holds "{}" or
        the subject). Independent by default: solved on the unedited model, not applied. With
        `sequential=True` it is solved on the model as this editor's earlier sequential edits
        left it, applied at once, and its keys are kept for the next; independent edits after
        it start from there too."""
        facts = check_facts(facts)
        for layer, weight in self.unedited.items():
            now = self.layout.weight(self.model, layer)
            if not sequential and not torch.equal(now, weight.to(now.device)):
                raise ValueError(f"layer {layer} of the model has changed since this editor was made (an edit is "
                                 f"applied?): revert it for an independent edit, or pass sequential=True to build "
                                 f"on it")
        values._Plan(self.tokenizer, facts, self.templates, self.config.values.kl_prompt)  # refuses merging targets
        memories = self.memories if sequential else None
        known = self._anchor(facts)
        batches = editing.edit_window(self.model, self.tokenizer, self.layout, self.config, self.layers, facts,
                                      self.templates, self.solvers, memories=memories, known=known,
                                      anchor=self.anchor if self.solvers[self.layer].anchored else None)
        diagnostics = {str(layer): {k: v for k, v in batch.diagnostics.items() if isinstance(v, (int, float, str))}
                       for layer, batch in batches.items()}
        edit = Edit({layer: (batch.A.float().cpu(), batch.B.float().cpu()) for layer, batch in batches.items()},
                    {**self.provenance, "sequential": sequential, "facts": [_plain(f) for f in facts],
                     "diagnostics": diagnostics[str(self.layer)] if len(batches) == 1 else diagnostics})
        if sequential:
            for layer, batch in batches.items():
                if self.memories[layer] is not None:
                    self.memories[layer].absorb(batch.keys, batch.TK)
            edit.apply(self.model)
            self.unedited = self._weights()
        return edit


    def _anchor(self, facts):
        """For NAS, the first edit's values (None, Values) on the unedited model, from which μ is measured
        once; None otherwise (edit_window computes the values itself)."""
        if not self.solvers[self.layer].anchored or self.anchor is not None:
            return None
        found = values.compute_values(self.model, self.tokenizer, self.layout, self.layer, facts, self.templates,
                                      self.config.values, batch_size=self.config.value_batch_size)
        self.anchor = nas.anchor(found, nas.mlp_outputs(self.model, self.tokenizer, self.layout, self.layer, facts))
        self.provenance["nas_anchor"] = self.anchor
        return None, found


def check_facts(facts) -> list[dict]:
    """Every fact checked (`check_fact`), at least one, and no two targets for one subject: what can be
    told without a model (the command line asks before it loads one)."""
    facts = [check_fact(fact, i) for i, fact in enumerate(facts)]
    if not facts:
        raise ValueError("no facts to edit")
    editing.check_conflicts([facts], fix="give one target per subject in a call (edit the others in another "
                                            "call, or with sequential=True)")
    return facts


def check_fact(fact, index: int) -> dict:
    """The fact with "{}" in its prompt, or a ValueError naming it, checked by the datasets' own rule
    (`data.records.check_edit`): a prompt with "{}" or the subject, one "{}" and no other brace; a
    subject; a target on one trimmed line. Token-level problems (a subject with no token, a target
    that merges with it) are `values._Plan`'s to find, which `Editor.edit` builds first."""
    if not isinstance(fact, dict):
        raise ValueError(f"fact {index} is a {type(fact).__name__}; give a dict with prompt, subject, target_new")
    missing = [k for k in ("prompt", "subject", "target_new") if not isinstance(fact.get(k), str)]
    if missing:
        raise ValueError(f"fact {index} ({fact!r}) has no {', '.join(missing)} (text)")
    names = {"prompt": "prompt", "subject": "subject", "target": "target_new"}

    def fail(field, problem, fix):
        return ValueError(f"fact {index}: {names[field]} {problem}; {fix}")

    prompt = check_edit(fact["subject"], fact["prompt"], fact["target_new"], fail)
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
