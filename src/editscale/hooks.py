"""Forward hooks: read a module's input, stop a forward early, replay the top of the model.

Editing at layer L never needs blocks above L to compute keys, and value optimisation
never needs blocks up to L more than once: these helpers make both cheap.
"""

from __future__ import annotations

import contextlib
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
            model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()


def block_output(output):
    """Blocks return a tensor or a tuple led by one, depending on architecture and version."""
    return output[0] if isinstance(output, tuple) else output


class UpperStack:
    """Blocks above layer L replayed on a fixed batch, from a cached block-L output.

    One full forward records block L's output and the arguments every higher block was
    called with (masks, position embeddings): they do not depend on what is added to
    the residual stream, so `run(h)` is exact for any h.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, layer: int, **inputs):
        self.blocks = list(blocks)[layer + 1 :]
        self.calls: list[tuple[tuple, dict]] = []
        captured: dict = {}

        def keep_output(_module, _args, output):
            captured["h"] = block_output(output).detach()

        def keep_call(_module, args, kwargs):
            self.calls.append((args[1:], dict(kwargs)))

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


def _rows(value, rows: torch.Tensor, batch: int):
    # Batch-shaped tensors have the batch first and at least 2 dims; broadcast ones
    # (position embeddings of batch 1, 1-d cache positions) are left alone.
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)] if value.dim() >= 2 and value.shape[0] == batch and batch > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_rows(v, rows, batch) for v in value]
    if isinstance(value, dict):
        return {k: _rows(v, rows, batch) for k, v in value.items()}
    return value
