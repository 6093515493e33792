"""Sequential-batch editing: batches applied one after another to the same model, resumable.

Each batch's keys and values are computed on the model as already edited; C stays fixed; the
algorithms that keep earlier keys (AlphaEdit) see them through a `KeyMemory`.

The run folder holds what each batch adds and nothing more. Once batch b is applied and
evaluated, `batch-<b>.safetensors` is written atomically: its factors A, B (ΔW_b = A Bᵀ), its keys
when the algorithm keeps them, and its diagnostics: O((d_in + d_out)·n) bytes. Every
`snapshot_every` batches the edited weight itself goes to `snapshot.safetensors`. Each batch's
diagnostics hold the solver's, the value optimisation's and the weight health after it (`health`). A rerun loads
the last snapshot and replays the factors after it (the same additions in the same order, so the
same bits), and absorbs every stored batch's keys into a new memory (the same bits again).

Every file carries the run's identity. Files of another identity are never used: the run starts
over and logs why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from editscale import algorithms, artifacts, settings
from editscale.algorithms import KeyMemory, Prepared
from editscale.editing.batches import EditConfig, apply_delta
from editscale.editing.health import weight_health
from editscale.editing.values import Values
from editscale.editing.window import edit_batch

log = logging.getLogger(__name__)


@dataclass
class SequentialState:
    batches_done: int = 0
    diagnostics: list = field(default_factory=list)
    total: torch.Tensor | None = None  # Σ ΔW_b in float32 (d_out, d_in), on the solver's device
    memory: KeyMemory | None = None  # earlier keys, for algorithms that keep them
    unedited: dict = field(default_factory=dict)  # the weight health of W₀


def run_identity(cfg: EditConfig, facts, templates, batch_size: int, extra=None) -> str:
    """A digest of everything a sequential run's results depend on, and nothing that only changes
    how it runs (batch sizes of the forwards); `extra` is what the caller adds (the statistics'
    content hash, evaluation settings, ...)."""
    edit = {"algorithm": cfg.algorithm, "layer": cfg.layer, "on_ill_conditioned": cfg.edit.on_ill_conditioned,
            **cfg.settings(), "values": settings.results(cfg.values)}
    described = json.dumps([edit, [dict(f) for f in facts], list(templates), batch_size, extra],
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def sequential(model, tokenizer, layout, cfg: EditConfig, facts, templates, solver: Prepared, batch_size: int,
               run_dir: str | Path, *, identity: str, snapshot_every: int = 256,
               after_batch: Callable[[int, list], None] | None = None,
               first_batch: tuple[torch.Tensor, Values] | None = None) -> SequentialState:
    """Apply batches of `batch_size` facts one after another to the same (initially unedited) model.

    `after_batch(b, batch_facts)` runs after batch b is applied and before it is recorded
    (immediate evaluation); it may run twice for a batch interrupted in between, so it must
    overwrite, not append. `first_batch` is (keys, Values) of batch 0 on the unedited model, e.g.
    from the cached value chunks: the model is unedited only then.
    """
    run_dir = Path(run_dir)
    remembers = algorithms.get(cfg.algorithm).remembers
    w0 = layout.weight(model, cfg.layer)  # measured before a resume moves the weights
    w0_norm = float(w0.double().norm())
    unedited = {"batch": -1, "n_edits": 0, **weight_health(w0_norm, w0, torch.zeros_like(w0, dtype=torch.float32))}
    state = _resume(run_dir, identity, model, layout, cfg, solver, remembers)
    state.unedited = unedited
    batches = [facts[i : i + batch_size] for i in range(0, len(facts), batch_size)]
    for b in range(state.batches_done, len(batches)):
        known = first_batch if b == 0 else None
        edit = edit_batch(model, tokenizer, layout, cfg, batches[b], templates, solver, memory=state.memory,
                          known=known)
        _add(state, model, layout, cfg.layer, edit.delta)
        if remembers:
            state.memory.absorb(edit.keys, edit.TK)
        health = weight_health(w0_norm, layout.weight(model, cfg.layer), state.total)
        state.diagnostics.append({"batch": b, "n_edits": sum(map(len, batches[: b + 1])), **edit.diagnostics,
                                  **health})
        # Evaluation first: a batch counts as done only once its results are recorded, so a run
        # killed in between redoes the batch (deterministically) rather than losing them.
        if after_batch is not None:
            after_batch(b, batches[b])
        tensors = {"A": edit.A, "B": edit.B, **({"keys": edit.keys} if remembers else {})}
        artifacts.write_safetensors(tensors, run_dir / f"batch-{b:05d}.safetensors",
                                    metadata={"identity": identity, "diagnostics": json.dumps(state.diagnostics[-1])})
        state.batches_done = b + 1
        if state.batches_done % snapshot_every == 0 and state.batches_done < len(batches):
            weight = layout.weight(model, cfg.layer)
            artifacts.write_safetensors({"weight": weight}, run_dir / "snapshot.safetensors",
                                        metadata={"identity": identity, "batches_done": state.batches_done})
    return state


def _add(state: SequentialState, model, layout, layer: int, delta: torch.Tensor, *, to_weight: bool = True) -> None:
    """The one way a batch's ΔW reaches the weights and the running total, in a run and in a replay."""
    if to_weight:
        apply_delta(model, layout, layer, delta)
    state.total = delta.float().clone() if state.total is None else state.total.add_(delta.float())


def _resume(run_dir: Path, identity: str, model, layout, cfg: EditConfig, solver: Prepared,
            remembers: bool) -> SequentialState:
    state = SequentialState(memory=KeyMemory() if remembers else None)
    done = _batch_files(run_dir)
    found = {artifacts.read_metadata(p).get("identity") for p in done}
    snapshot = run_dir / "snapshot.safetensors"
    if snapshot.exists():
        found.add(artifacts.read_metadata(snapshot).get("identity"))
    if found - {identity}:
        log.warning("not resuming from %s: it was written by another run (identity %s, this run %s); starting over",
                    run_dir, ", ".join(sorted(map(str, found - {identity}))), identity)
        shutil.rmtree(run_dir)
        done = []
    run_dir.mkdir(parents=True, exist_ok=True)
    if not done:
        return state
    start = 0
    if snapshot.exists():
        meta = artifacts.read_metadata(snapshot)
        if int(meta["batches_done"]) <= len(done):
            start = int(meta["batches_done"])
            weight = layout.weight(model, cfg.layer)
            with torch.no_grad():
                weight.copy_(artifacts.read_tensors(snapshot)["weight"].to(weight.device, weight.dtype))
    log.info("resuming %s after batch %d (snapshot after %d, %d replayed)", run_dir, len(done), start,
             len(done) - start)
    for b, path in enumerate(done):
        tensors = artifacts.read_tensors(path, device=solver.T.device)
        # Batches before the snapshot are in its weight already; they still count in the total.
        _add(state, model, layout, cfg.layer, tensors["A"] @ tensors["B"].T, to_weight=b >= start)
        if remembers:
            state.memory.absorb(tensors["keys"], solver.transform(tensors["keys"]))
        state.diagnostics.append(json.loads(artifacts.read_metadata(path)["diagnostics"]))
    state.batches_done = len(done)
    return state


def _batch_files(run_dir: Path) -> list[Path]:
    """batch-00000 … batch-<b-1>, consecutive from 0 (a gap ends the list)."""
    files = []
    while (run_dir / f"batch-{len(files):05d}.safetensors").exists():
        files.append(run_dir / f"batch-{len(files):05d}.safetensors")
    return files


def stored_edits(run_dir: str | Path) -> dict:
    """Every stored batch's factors side by side: ΔW_total = A Bᵀ with A (d_out, N), B (d_in, N)."""
    parts = [artifacts.read_tensors(p) for p in _batch_files(Path(run_dir))]
    return {"A": torch.cat([p["A"] for p in parts], 1), "B": torch.cat([p["B"] for p in parts], 1),
            "batch_sizes": torch.tensor([p["A"].shape[1] for p in parts])}
