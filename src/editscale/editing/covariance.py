"""The key second moment C = E[k kᵀ] of the edited module's input over generic text (docs/design.md §2).

Sampling follows the reference's `layer_stats` (docs/fidelity.md): every text is one sequence,
truncated at `max_length` tokens, never cut into several; pads are left out and, as in the
reference, each sequence's first token is summed too, unless `skip_first_token` (its key is
far larger than the rest, so how many sequences C holds changes C).

One forward pass fills every requested layer, and it stops at the deepest one: blocks
above it, the final norm and the LM head never run (README, How it is fast). Sums stay in float32 on
the model's device and grow with `addmm_`.

Batching. Texts are read `window` at a time, sorted longest first and cut into batches of
at most `batch_tokens` padded tokens (the reference's `length_collation`), so whole articles
of mixed lengths are padded little. Which tokens are summed does not depend on the batching,
only the order of the float32 sums does.

Token budget: `max_tokens` counts summed tokens and is exact; it is spent in text order, and
the text that would pass it is cut short (causal attention keeps the kept tokens' keys).

Checkpoints: every `checkpoint_every` windows, or once `checkpoint_seconds` have passed since the
last one (32 layers of Llama-3's 14336² sums are 26 GB), the partial sums, the texts read and the
tokens counted are written atomically. A restart skips the texts already read, so windows fall on
the same texts and the final sums are bit-identical to an uninterrupted run. A checkpoint is
resumed as it is: name its path by everything the sums depend on (`stats.compute` keeps it in an
`artifacts.Parts` folder named by `stats.identity`), so no check inside repeats what its name says.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from editscale import artifacts
from editscale.models.hooks import forward_until
from editscale.models.tokens import length_batches, pad_batch
from editscale.settings import Stats

log = logging.getLogger(__name__)
WINDOW = 100  # texts read, sorted and batched together: it orders the float32 sums (`stats.identity`)


@dataclass
class SecondMoment:
    layer: int
    module: str  # the hooked module's name in the model, e.g. "model.layers.1.mlp.down_proj"
    sum: torch.Tensor  # Σ k kᵀ, (d_in, d_in), float32, on the model's device
    count: int  # tokens summed

    def mean(self) -> torch.Tensor:
        return self.sum / self.count


def second_moments(model, tokenizer, layout, layers: Iterable[int], texts: Iterable[str], *, max_length: int,
                   max_tokens: int | None = None, max_samples: int | None = None, skip_first_token: bool = False,
                   batch_tokens: int = Stats.batch_tokens, window: int = WINDOW, checkpoint: str | Path | None = None,
                   checkpoint_every: int | None = None, checkpoint_seconds: float = 600, source_id: str = "",
                   progress: bool = True) -> dict[int, SecondMoment]:
    """C for each of `layers`, from `texts` (empty ones are read but contribute nothing).

    `max_samples` bounds the texts read; `max_tokens` bounds the tokens summed, exactly.
    """
    layers = sorted(set(layers))
    if not layers:
        raise ValueError("second_moments needs at least one layer")
    device = next(model.parameters()).device
    modules = {layer: layout.edited_module(model, layer) for layer in layers}
    d_in = {layer: layout.weight(model, layer).shape[1] for layer in layers}  # (d_out, d_in) for every architecture
    moments = {layer: SecondMoment(layer, layout.module_name(layer),
                                   torch.zeros(d_in[layer], d_in[layer], dtype=torch.float32, device=device), 0)
               for layer in layers}
    samples = _resume(checkpoint, moments) if checkpoint else 0
    tokens = moments[layers[0]].count
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    first = int(skip_first_token)

    texts = iter(texts)
    for _ in itertools.islice(texts, samples):  # already summed in the checkpoint
        pass
    bar = tqdm(total=max_tokens, initial=tokens, unit="tok", desc=f"C layers {','.join(map(str, layers))}",
               disable=not progress)
    windows, saved = 0, time.monotonic()
    try:
        while (max_samples is None or samples < max_samples) and (max_tokens is None or tokens < max_tokens):
            limit = window if max_samples is None else min(window, max_samples - samples)
            sequences, read = _read_window(texts, tokenizer, limit, max_length, first,
                                           None if max_tokens is None else max_tokens - tokens)
            samples += read
            for batch in _length_batches(sequences, batch_tokens):
                inputs = pad_batch(batch, pad_id, device)
                summed = inputs["attention_mask"].bool()
                summed[:, :first] = False  # (batch, seq) mask: the skipped first token
                with _summing(modules, moments, summed):
                    forward_until(model, modules[layers[-1]], **inputs)
                tokens += int(summed.sum())
                bar.update(int(summed.sum()))
            windows += 1
            if read < limit:
                break  # out of texts (or out of budget, which the loop condition also sees)
            due = (checkpoint_every and windows % checkpoint_every == 0) or time.monotonic() - saved > checkpoint_seconds
            if checkpoint and due:
                _save(checkpoint, moments, samples, tokens)
                saved = time.monotonic()
    finally:
        bar.close()
    if tokens == 0:
        raise ValueError(f"the corpus {source_id or '(given texts)'} gave no tokens to sum: C would be undefined; "
                         f"name a corpus with text (stats.corpus)")
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    return moments


@contextlib.contextmanager
def _summing(modules: dict, moments: dict, summed: torch.Tensor):
    """Add each module's input at the `summed` positions into its layer's moment as the forward
    reaches it, so only one layer's keys are held at a time (32 layers of 14336-d keys would not fit)."""

    def add(layer):
        def hook(_module, args):
            k = args[0][summed].float()
            moments[layer].sum.addmm_(k.T, k)  # Σ kkᵀ += kᵀk: k (tokens, d_in) -> (d_in, d_in)
            moments[layer].count += len(k)
        return hook

    handles = [module.register_forward_pre_hook(add(layer)) for layer, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _read_window(texts, tokenizer, limit: int, max_length: int, first: int, budget: int | None):
    """Token id lists of the next `limit` texts (each truncated at `max_length`, the last one cut
    so that at most `budget` tokens are summed, the first `first` of each not counting); texts read."""
    sequences, read, summed = [], 0, 0
    while read < limit and (budget is None or summed < budget):
        text = next(texts, None)
        if text is None:
            break
        read += 1
        if not text.strip():
            continue
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if budget is not None:
            ids = ids[: budget - summed + first]
        if len(ids) > first:
            sequences.append(ids)
            summed += len(ids) - first
    return sequences, read


def _length_batches(sequences: list[list[int]], batch_tokens: int) -> list[list[list[int]]]:
    """Longest first, a new batch whenever its width times its rows would pass `batch_tokens`
    (a sequence longer than that goes alone): the reference's `length_collation`."""
    groups = length_batches([len(s) for s in sequences], batch_tokens, longest_first=True)
    return [[sequences[i] for i in group] for group in groups]


def _save(path, moments: dict, samples: int, tokens: int) -> None:
    tensors = {f"sum.{layer}": m.sum for layer, m in moments.items()}
    artifacts.write_safetensors(tensors, path, metadata={"samples": samples, "tokens": tokens})


def _resume(path, moments: dict) -> int:
    """Load partial sums from an existing checkpoint into `moments`; the texts it had read. The
    checkpoint's path names the sums it holds (`stats.identity`), so they are these sums."""
    path = Path(path)
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata()
        for layer, moment in moments.items():
            moment.sum.copy_(f.get_tensor(f"sum.{layer}"))
            moment.count = int(saved["tokens"])
    log.info("resuming the statistics from %s after %s texts", path, saved["samples"])
    return int(saved["samples"])


def write_stats(moments: dict[int, SecondMoment], out, *, model_name: str, source_id: str,
                dtype: str | torch.dtype, max_length: int, skip_first_token: bool,
                stats_id: str | None = None) -> dict[int, Path]:
    """One safetensors file per layer, tensor "C" (float32), with its provenance as metadata.

    `out` is a folder (files `layer{L}.safetensors`) or a mapping {layer: path}.
    """
    written = {}
    for layer, moment in moments.items():
        path = Path(out[layer]) if isinstance(out, dict) else Path(out) / f"layer{layer}.safetensors"
        metadata = {"model": model_name, "layer": layer, "module": moment.module, "source": source_id,
                    "tokens": moment.count, "dtype": str(dtype).removeprefix("torch."), "max_length": max_length,
                    "skip_first_token": skip_first_token, **({"stats_id": stats_id} if stats_id else {})}
        artifacts.write_safetensors({"C": moment.mean().float()}, path, metadata=metadata)
        written[layer] = path
    return written


def load_stats(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict]:
    """C and its metadata (layer, tokens and max_length as ints, skip_first_token a bool) from a file `write_stats` wrote."""
    from safetensors import safe_open

    with artifacts.reading(path), safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = dict(f.metadata())
        C = f.get_tensor("C")
    metadata.pop(artifacts.DIGEST, None)  # the file's own check (artifacts.verify), not C's provenance
    for key in ("layer", "tokens", "max_length"):
        metadata[key] = int(metadata[key])
    metadata["skip_first_token"] = metadata["skip_first_token"] == "True"
    return C, metadata
