"""Forward hooks: read a module's input, stop a forward early, replay the top of the model.

Editing at layer L never needs blocks above L to compute keys, and value optimisation
never needs blocks up to L, or the positions before the edited one, more than once:
these helpers make both cheap.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
from torch import nn


class _Stop(Exception):
    pass


@contextlib.contextmanager
def module_inputs(modules: dict) -> Iterator[dict]:
    """Collect the first positional input of each module (by key) during the block."""
    seen: dict = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, args, key=key: seen.__setitem__(key, args[0].detach()))
        for key, module in modules.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def forward_until(model: nn.Module, last: nn.Module, **inputs) -> None:
    """Run `model(**inputs)` without grad and stop as soon as `last` has run."""

    def stop(_module, _args, _output):
        raise _Stop

    handle = last.register_forward_hook(stop)
    try:
        with torch.no_grad():
            model(**{"use_cache": False, **inputs})
    except _Stop:
        pass
    finally:
        handle.remove()


def cache_argument(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); the name this model takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def block_output(output):
    """Blocks return a tensor or a tuple led by one, depending on architecture and version."""
    return output[0] if isinstance(output, tuple) else output


class UpperStack:
    """Blocks above layer L replayed on a fixed batch, from a cached block-L output.

    One full forward records block L's output and the arguments every higher block was
    called with (masks, position embeddings): they do not depend on what is added to
    the residual stream, so `run(h)` is exact for any h.

    With `prefix` > 0 the first `prefix` positions run once, into a KV cache, and only
    the positions after them are recorded and replayed: under causal attention nothing
    added at or after `prefix` can change them. `hidden` then holds those later positions.
    Pass `position_ids` when rows are left-padded.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, layer: int, *, prefix: int = 0, **inputs):
        self.blocks = list(blocks)[layer + 1 :]
        self.calls: list[tuple[tuple, dict]] = []
        captured: dict = {}
        frozen = None
        if prefix:
            inputs, cache, frozen = _after_prefix(model, prefix, inputs)

        def keep_output(_module, _args, output):
            captured["h"] = block_output(output).detach()

        def keep_call(_module, args, kwargs):
            self.calls.append(_swap((args[1:], dict(kwargs)), cache, frozen) if frozen else (args[1:], dict(kwargs)))

        handles = [blocks[layer].register_forward_hook(keep_output)]
        handles += [b.register_forward_pre_hook(keep_call, with_kwargs=True) for b in self.blocks]
        try:
            last = self.blocks[-1] if self.blocks else blocks[layer]
            forward_until(model, last, **inputs)
        finally:
            for handle in handles:
                handle.remove()
        self.hidden = captured["h"]
        self.size = self.hidden.shape[0]

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for block, (args, kwargs) in zip(self.blocks, self.calls):
            h = block_output(block(h, *args, **kwargs))
        return h

    def select(self, rows: torch.Tensor) -> "UpperStack":
        """The same stack restricted to batch rows `rows` (for records that are still optimising)."""
        sub = object.__new__(UpperStack)
        sub.blocks, sub.size = self.blocks, len(rows)
        sub.hidden = self.hidden[rows]
        sub.calls = [(_rows(args, rows, self.size), _rows(kwargs, rows, self.size)) for args, kwargs in self.calls]
        return sub


class FrozenPrefix:
    """Stands in for a KV cache during replay: keys and values of the prefix, per layer,
    put before the new ones on every call and never stored, so replays do not pile up."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys, values, layer_idx, *args, **kwargs):
        prefix_keys, prefix_values = self.kv[layer_idx]
        return torch.cat([prefix_keys, keys], dim=-2), torch.cat([prefix_values, values], dim=-2)

    def select(self, rows: torch.Tensor) -> "FrozenPrefix":
        sub = FrozenPrefix()
        sub.kv = {i: (k[rows.to(k.device)], v[rows.to(v.device)]) for i, (k, v) in self.kv.items()}
        return sub


def _after_prefix(model: nn.Module, prefix: int, inputs: dict):
    """Run the first `prefix` positions into a cache; the inputs for the rest, the cache, and
    a FrozenPrefix that the cache fills with each layer's prefix keys and values as the rest runs."""
    ids, mask, positions = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    name = cache_argument(model)
    with torch.no_grad():
        cache = model(input_ids=ids[:, :prefix], attention_mask=mask[:, :prefix], position_ids=positions[:, :prefix],
                      use_cache=True)[name]
    frozen = FrozenPrefix()
    update = cache.update

    def update_and_keep_prefix(keys, values, layer_idx, *args, **kwargs):
        all_keys, all_values = update(keys, values, layer_idx, *args, **kwargs)
        new = keys.shape[-2]
        frozen.kv[layer_idx] = (all_keys[..., :-new, :].detach(), all_values[..., :-new, :].detach())
        return all_keys, all_values

    cache.update = update_and_keep_prefix
    rest = {"input_ids": ids[:, prefix:], "attention_mask": mask, "position_ids": positions[:, prefix:],
            "use_cache": True, name: cache}
    return rest, cache, frozen


def _swap(value, old, new):
    """`value` with the object `old` replaced by `new` wherever it sits in tuples, lists and dicts."""
    if value is old:
        return new
    if isinstance(value, (tuple, list)):
        return type(value)(_swap(v, old, new) for v in value)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    return value


def _rows(value, rows: torch.Tensor, batch: int):
    # Batch-shaped tensors have the batch first and at least 2 dims; broadcast ones
    # (position embeddings of batch 1, 1-d cache positions) are left alone.
    if isinstance(value, FrozenPrefix):
        return value.select(rows)
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)] if value.dim() >= 2 and value.shape[0] == batch and batch > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_rows(v, rows, batch) for v in value]
    if isinstance(value, dict):
        return {k: _rows(v, rows, batch) for k, v in value.items()}
    return value
