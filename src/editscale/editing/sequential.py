"""Sequential-batch editing: batches applied one after another to the same model, resumable.

Each batch's keys and values are computed on the model as already edited; C stays fixed; the
algorithms that carry a state from batch to batch (earlier keys, RLSEdit's running inverse,
EvoEdit's shrinking projector: `Prepared.memory`) grow it after each batch from its keys.

A run edits one layer or spreads each batch over a window of layers (`window.edit_window`).
The run folder holds what each batch adds and nothing more. Once batch b is applied and
evaluated, `batch-<b>.safetensors` is written atomically: per layer l its factors `layer<l>.A`,
`layer<l>.B` (ΔW_b = A Bᵀ), its keys when the algorithm carries a state, and its diagnostics:
O((d_in + d_out)·n) bytes a layer. Every `snapshot_every` batches the edited weights themselves go
to `snapshot.safetensors`. Each batch's
diagnostics hold the solver's, the value optimisation's and the weight health after it (`health`). A rerun loads
the last snapshot and replays the factors after it (the same additions in the same order, so the
same bits), and absorbs every stored batch's keys into a new state (the same bits again).

The run folder is named by everything the run depends on (the workflow hands it an
`artifacts.Parts` folder, which removes a folder of any other identity), so what is in it is this
run's: nothing inside stamps or checks the identity again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from editscale import algorithms, artifacts, settings
from editscale.editing.batches import EditConfig, apply_delta, batch_slices, check_conflicts, restored
from editscale.editing.health import weight_health
from editscale.editing.values import Values
from editscale.editing.window import edit_window

log = logging.getLogger(__name__)


@dataclass
class SequentialState:
    batches_done: int = 0
    diagnostics: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)  # layer -> Σ ΔW_b in float32 (d_out, d_in), on the solver's device
    memories: dict = field(default_factory=dict)  # layer -> the solver's sequential state, for algorithms with one
    unedited: dict = field(default_factory=dict)  # the weight health of W₀

    @property
    def total(self) -> torch.Tensor | None:
        """Σ ΔW_b of a single-layer run."""
        return self.totals.get(_only(self.totals)) if self.totals else None

    @property
    def memory(self):
        return self.memories.get(_only(self.memories)) if self.memories else None


def _only(per_layer: dict):
    if len(per_layer) != 1:
        raise ValueError(f"a run over layers {sorted(per_layer)} has one total per layer: read .totals")
    return next(iter(per_layer))


class SequentialRun:
    """Batches of `batch_size` facts applied one after another to the same (initially unedited)
    model, at `cfg.layer` or spread over the window `layers` (`window.edit_window`; `solver` then
    maps each layer to its prepared solver).

        run = SequentialRun(...)
        for b, batch_facts in run:      # batch b is applied here, not yet recorded
            evaluate(b, batch_facts)    # immediate evaluation; may run twice for a killed batch
        run.state                       # totals, memories, diagnostics

    A batch is recorded when the caller asks for the next one, so a run killed while the caller
    evaluates it redoes the batch (deterministically) rather than losing its results; the caller
    must overwrite what it writes, not append. Constructing the run resumes from `run_dir`, which
    must hold this run's work and nothing else's: name it by everything the run depends on
    (`artifacts.Parts`).
    `first_batch` is (keys at the first layer or None, Values at the last) of batch 0 on the
    unedited model, e.g. from the value files: the model is unedited only then. `anchor`: NAS's μ
    from the unedited model, for an algorithm that anchors its values (`editing.nas`); every batch's
    values are rescaled to it. Weight health is measured at each layer and, for a window, over all of them.
    """

    def __init__(self, model, tokenizer, layout, cfg: EditConfig, facts, templates, solver, batch_size: int,
                 run_dir: str | Path, *, snapshot_every: int = settings.Sequential.snapshot_every,
                 first_batch: tuple[torch.Tensor | None, Values] | None = None, layers: list | None = None,
                 allow_conflicts: bool = settings.EditSettings.allow_conflicts, anchor: float | None = None):
        self.model, self.tokenizer, self.layout, self.cfg, self.templates = model, tokenizer, layout, cfg, templates
        self.run_dir, self.snapshot_every, self.first_batch, self.anchor = Path(run_dir), snapshot_every, first_batch, anchor
        self.layers = sorted(layers) if layers else [cfg.layer]
        self.solvers = solver if isinstance(solver, dict) else {self.layers[0]: solver}
        self.remembers = algorithms.get(cfg.algorithm).remembers
        self.batches = [facts[cut] for cut in batch_slices(len(facts), batch_size)]
        check_conflicts(self.batches, allow_conflicts)
        # The unedited weights' health is measured here, before a resume replays the done batches into
        # the same tensors (`layout.weight` is the live parameter, not a copy).
        w0 = {layer: layout.weight(model, layer) for layer in self.layers}
        self.w0_norms = {layer: float(w.double().norm()) for layer, w in w0.items()}
        unedited = _health(self.w0_norms, w0,
                           {layer: torch.zeros_like(w, dtype=torch.float32) for layer, w in w0.items()})
        self.state = _resume(self.run_dir, model, layout, self.layers, self.solvers)
        self.state.unedited = {"batch": -1, "n_edits": 0, **unedited}

    def edits_after(self, b: int) -> int:
        """The facts edited once batch b is applied (the last batch may be short): the one count of
        edits so far, for the diagnostics and the caller's tables."""
        return sum(map(len, self.batches[: b + 1]))

    def __iter__(self) -> Iterator[tuple[int, list]]:
        state, layers, model, layout = self.state, self.layers, self.model, self.layout
        # Progress in facts, not batches: at B = 1 every fact is a batch of its own (values, solve, scoring).
        bar = tqdm(total=sum(map(len, self.batches)), initial=sum(map(len, self.batches[: state.batches_done])),
                   unit="fact", desc=f"sequential B = {len(self.batches[0]) if self.batches else 0}")
        for b in range(state.batches_done, len(self.batches)):
            known = self.first_batch if b == 0 else None
            edits = edit_window(model, self.tokenizer, layout, self.cfg, layers, self.batches[b], self.templates,
                                self.solvers, memories=state.memories, known=known, anchor=self.anchor)
            for layer, edit in edits.items():
                _add(state, model, layout, layer, edit.delta)
                if self.remembers:
                    state.memories[layer].absorb(edit.keys, edit.TK)
            health = _health(self.w0_norms, {layer: layout.weight(model, layer) for layer in layers}, state.totals)
            state.diagnostics.append({"batch": b, "n_edits": self.edits_after(b),
                                      **_diagnostics(edits), **health})
            yield b, self.batches[b]  # the caller evaluates the applied batch before it counts as done
            tensors = {f"layer{layer}.{name}": t for layer, edit in edits.items()
                       for name, t in (("A", edit.A), ("B", edit.B),
                                       *((("keys", edit.keys),) if self.remembers else ()))}
            artifacts.write_safetensors(tensors, self.run_dir / f"batch-{b:05d}.safetensors",
                                        metadata={"diagnostics": json.dumps(state.diagnostics[-1])})
            state.batches_done = b + 1
            bar.update(len(self.batches[b]))
            if state.batches_done % self.snapshot_every == 0 and state.batches_done < len(self.batches):
                weights = {f"layer{layer}.weight": layout.weight(model, layer) for layer in layers}
                artifacts.write_safetensors(weights, self.run_dir / "snapshot.safetensors",
                                            metadata={"batches_done": state.batches_done})
        bar.close()


def _diagnostics(edits: dict) -> dict:
    """A single layer's diagnostics as they are; a window's per layer (`L<l>.<name>`), and the
    value optimisation's (shared by the window's layers) once."""
    if len(edits) == 1:
        return next(iter(edits.values())).diagnostics
    shared = ("n", "value_loss", "value_steps", "converged")
    first = next(iter(edits.values())).diagnostics
    out = {k: first[k] for k in shared if k in first}
    for layer, edit in edits.items():
        out.update({f"L{layer}.{k}": v for k, v in edit.diagnostics.items() if k not in shared})
    return out


def _health(w0_norms: dict, weights: dict, totals: dict) -> dict:
    """`weight_health` of a single layer; of a window, each layer's (`L<l>.<name>`) and the
    window's: ‖ΔW‖ / ‖W₀‖ over all its layers together (Frobenius), and the largest layer's
    spectral norm of ΔW and condition number of W."""
    per_layer = {layer: weight_health(w0_norms[layer], weights[layer], totals[layer]) for layer in weights}
    if len(weights) == 1:
        return next(iter(per_layer.values()))
    out = {"delta_relative": sum(float(totals[l].double().norm()) ** 2 for l in weights) ** 0.5
           / sum(n ** 2 for n in w0_norms.values()) ** 0.5,
           "delta_spectral": max(h["delta_spectral"] for h in per_layer.values()),
           "weight_norm": sum(h["weight_norm"] ** 2 for h in per_layer.values()) ** 0.5,
           "weight_condition": max(h["weight_condition"] for h in per_layer.values())}
    for layer, health in per_layer.items():
        out.update({f"L{layer}.{k}": v for k, v in health.items()})
    return out


def _add(state: SequentialState, model, layout, layer: int, delta: torch.Tensor, *, to_weight: bool = True) -> None:
    """The one way a batch's ΔW reaches the weights and the running total, in a run and in a replay."""
    if to_weight:
        apply_delta(model, layout, layer, delta)
    total = state.totals.get(layer)
    state.totals[layer] = delta.float().clone() if total is None else total.add_(delta.float())


def _resume(run_dir: Path, model, layout, layers: list, solvers: dict) -> SequentialState:
    """The state after the batches `run_dir` holds (this run's, as its name guarantees)."""
    fresh = {layer: solvers[layer].memory() for layer in layers}
    state = SequentialState(memories={layer: m for layer, m in fresh.items() if m is not None})
    done = _batch_files(run_dir)
    snapshot = run_dir / "snapshot.safetensors"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not done:
        return state
    start = 0
    if snapshot.exists():
        meta = artifacts.read_metadata(snapshot)
        if int(meta["batches_done"]) <= len(done):
            start = int(meta["batches_done"])
            saved = artifacts.read_tensors(snapshot)
            with torch.no_grad():
                for layer in layers:
                    weight = layout.weight(model, layer)
                    weight.copy_(saved[f"layer{layer}.weight"].to(weight.device, weight.dtype))
    log.info("resuming %s after batch %d (snapshot after %d, %d replayed)", run_dir, len(done), start,
             len(done) - start)
    for b, path in enumerate(done):
        for layer in layers:
            solver = solvers[layer]
            tensors = artifacts.read_tensors(path, device=solver.T.device)
            # Batches before the snapshot are in its weight already; they still count in the total.
            _add(state, model, layout, layer, tensors[f"layer{layer}.A"] @ tensors[f"layer{layer}.B"].T,
                 to_weight=b >= start)
            if layer in state.memories:
                state.memories[layer].absorb(tensors[f"layer{layer}.keys"])
        state.diagnostics.append(json.loads(artifacts.read_metadata(path)["diagnostics"]))
    state.batches_done = len(done)
    return state


def _batch_files(run_dir: Path) -> list[Path]:
    """batch-00000 … batch-<b-1>, consecutive from 0 (a gap ends the list)."""
    files = []
    while (run_dir / f"batch-{len(files):05d}.safetensors").exists():
        files.append(run_dir / f"batch-{len(files):05d}.safetensors")
    return files


def replay(stored: dict, model, layout) -> Iterator[int]:
    """A finished run's weights, batch by batch: its stored factors (`stored_edits`) added back in
    their order, as the run added them (so the weights are the run's own, bit for bit); yields the
    edits so far after each batch. W₀ is restored from a copy when the loop ends or is left."""
    layers = sorted(int(k.split(".")[0].removeprefix("layer")) for k in stored if k.endswith(".A"))
    widths = stored.get("widths", stored["batch_sizes"])  # files written before dense factors: one column a fact
    start, done = 0, 0
    with restored(model, layout, layers) as w0:
        for width, facts in zip(widths.tolist(), stored["batch_sizes"].tolist()):
            for layer in layers:
                # A (d_out, width), Bᵀ (width, d_in): this batch's columns of the run's factors
                A, B = (stored[f"layer{layer}.{x}"][:, start : start + width].to(w0[layer].device) for x in "AB")
                apply_delta(model, layout, layer, A @ B.T)  # (d_out, width) @ (width, d_in)
            start, done = start + width, done + facts
            yield done


def stored_edits(run_dir: str | Path) -> dict:
    """Every stored batch's factors side by side, per layer l: ΔW_total = A Bᵀ with
    `layer<l>.A` (d_out, Σ widths) and `layer<l>.B` (d_in, Σ widths), as an `editor.Edit` stores them;
    `batch_sizes` the facts of each batch and `widths` its factors' columns (one a fact, unless a
    restraint made ΔW dense: `algorithms.restraints.rect`)."""
    files = _batch_files(Path(run_dir))
    parts = [artifacts.read_tensors(p) for p in files]
    names = [k for k in parts[0] if k.endswith((".A", ".B"))]
    out = {name: torch.cat([p[name] for p in parts], 1) for name in names}  # A (d_out, Σ widths), B (d_in, Σ widths)
    edited = [json.loads(artifacts.read_metadata(p)["diagnostics"])["n_edits"] for p in files]
    return {**out, "widths": torch.tensor([p[names[0]].shape[1] for p in parts]),
            "batch_sizes": torch.tensor([b - a for a, b in zip([0, *edited], edited)])}
