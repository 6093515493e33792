"""The key second moment C = E[k kᵀ] of the edited module's input over generic text (DESIGN §2).

One forward pass fills every requested layer, and it stops at the deepest one: blocks
above it, the final norm and the LM head never run (DESIGN §5). Sums stay in float32 on
the model's device and grow with `addmm_`, one batch of non-pad tokens at a time.

Token budget: `max_tokens` is exact. The batch that would pass it has its last text cut
short; causal attention makes the kept tokens' keys the same as in the uncut text.

Checkpoints: every `checkpoint_every` batches the partial sums, the samples read and the
tokens counted are written atomically. A restart skips the samples already read, so
batches fall on the same texts and the final sums are bit-identical to an uninterrupted
run. A checkpoint made with other layers, another source, batch size or max_length
raises ValueError: silently mixing two configurations would corrupt C, and silently
discarding hours of work is as bad; the message says which file to delete.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from . import artifacts
from .hooks import forward_until, module_inputs
from .keys import pad_batch


@dataclass
class SecondMoment:
    layer: int
    module: str  # the hooked module's name in the model, e.g. "model.layers.1.mlp.down_proj"
    sum: torch.Tensor  # Σ k kᵀ, (d_in, d_in), float32, on the model's device
    count: int  # tokens summed

    def mean(self) -> torch.Tensor:
        return self.sum / self.count


def second_moments(model, tokenizer, layout, layers: Iterable[int], texts: Iterable[str], *,
                   max_tokens: int | None = None, max_samples: int | None = None, batch_size: int = 8,
                   max_length: int = 256, checkpoint: str | Path | None = None, checkpoint_every: int = 20,
                   source_id: str = "", progress: bool = True) -> dict[int, SecondMoment]:
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
    settings = {"layers": ",".join(map(str, layers)), "source_id": source_id,
                "batch_size": str(batch_size), "max_length": str(max_length)}
    samples = _resume(checkpoint, settings, moments) if checkpoint else 0
    tokens = moments[layers[0]].count
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    texts = iter(texts)
    for _ in itertools.islice(texts, samples):  # already summed in the checkpoint
        pass
    bar = tqdm(total=max_tokens, initial=tokens, unit="tok", desc=f"C layers {settings['layers']}",
               disable=not progress)
    batches = 0
    try:
        while max_samples is None or samples < max_samples:
            budget = None if max_tokens is None else max_tokens - tokens
            if budget is not None and budget <= 0:
                break
            batch, read = _next_batch(texts, tokenizer, batch_size, max_length, budget,
                                      None if max_samples is None else max_samples - samples)
            samples += read
            if batch:
                inputs = pad_batch(batch, pad_id, device)
                with module_inputs(modules) as seen:
                    forward_until(model, modules[layers[-1]], **inputs)
                real = inputs["attention_mask"].bool()
                for layer in layers:
                    k = seen[layer][real].float()
                    moments[layer].sum.addmm_(k.T, k)
                    moments[layer].count += len(k)
                tokens += int(real.sum())
                bar.update(int(real.sum()))
                batches += 1
            if len(batch) < batch_size:
                break  # out of texts, samples or tokens
            if checkpoint and batches % checkpoint_every == 0:
                _save(checkpoint, settings, moments, samples, tokens)
    finally:
        bar.close()
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    return moments


def _next_batch(texts, tokenizer, batch_size: int, max_length: int, budget: int | None,
                sample_budget: int | None) -> tuple[list[list[int]], int]:
    """Token id lists of up to `batch_size` non-empty texts, cut to `budget` tokens; and texts read."""
    batch, read = [], 0
    while len(batch) < batch_size and (sample_budget is None or read < sample_budget):
        text = next(texts, None)
        if text is None:
            break
        read += 1
        if not text.strip():
            continue
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if budget is not None:
            ids = ids[: budget - sum(map(len, batch))]
        if ids:
            batch.append(ids)
        if budget is not None and sum(map(len, batch)) >= budget:
            break
    return batch, read


def _save(path, settings: dict, moments: dict, samples: int, tokens: int) -> None:
    tensors = {f"sum.{layer}": m.sum for layer, m in moments.items()}
    artifacts.write_safetensors(tensors, path, metadata={**settings, "samples": samples, "tokens": tokens})


def _resume(path, settings: dict, moments: dict) -> int:
    """Load partial sums from an existing checkpoint into `moments`; the samples it had read."""
    path = Path(path)
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata()
        differ = {key: (saved.get(key), value) for key, value in settings.items() if saved.get(key) != value}
        if differ:
            found = ", ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in differ.items())
            raise ValueError(f"checkpoint {path} was made with other settings ({found}); "
                             f"delete it to start over, or run with the settings it was made with")
        for layer, moment in moments.items():
            moment.sum.copy_(f.get_tensor(f"sum.{layer}"))
            moment.count = int(saved["tokens"])
    return int(saved["samples"])


def write_stats(moments: dict[int, SecondMoment], out, *, model_name: str, source_id: str,
                dtype: str | torch.dtype) -> dict[int, Path]:
    """One safetensors file per layer, tensor "C" (float32), with its provenance as metadata.

    `out` is a folder (files `layer{L}.safetensors`) or a mapping {layer: path}.
    """
    written = {}
    for layer, moment in moments.items():
        path = Path(out[layer]) if isinstance(out, dict) else Path(out) / f"layer{layer}.safetensors"
        metadata = {"model": model_name, "layer": layer, "module": moment.module, "source": source_id,
                    "tokens": moment.count, "dtype": str(dtype).removeprefix("torch.")}
        artifacts.write_safetensors({"C": moment.mean().float()}, path, metadata=metadata)
        written[layer] = path
    return written


def load_stats(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict]:
    """C and its metadata (layer and tokens as ints) from a file `write_stats` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = dict(f.metadata())
        C = f.get_tensor("C")
    for key in ("layer", "tokens"):
        metadata[key] = int(metadata[key])
    return C, metadata
