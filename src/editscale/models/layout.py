"""Where the editable parts of each architecture live.

A `Layout` names the transformer blocks, the MLP output projection W that editing
changes, the final norm and the LM head. `weight()` always returns W as
(d_out, d_in), so GPT-2's transposed `Conv1D` is handled here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    blocks: str  # the ModuleList of transformer blocks, e.g. "model.layers"
    mlp_out: str  # W, relative to a block, e.g. "mlp.down_proj"; its input is the key
    final_norm: str  # e.g. "model.norm"
    lm_head: str  # e.g. "lm_head"
    transposed: bool = False  # True where W is stored as (d_in, d_out), like GPT-2's Conv1D

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def n_layers(self, model: nn.Module) -> int:
        return len(self.block_list(model))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block_list(model)[layer]

    def module_name(self, layer: int) -> str:
        return f"{self.blocks}.{layer}.{self.mlp_out}"

    def edited_module(self, model: nn.Module, layer: int) -> nn.Module:
        return model.get_submodule(self.module_name(layer))

    def weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """W as (d_out, d_in). A view: in-place changes reach the model."""
        w = self.edited_module(model, layer).weight
        return w.T if self.transposed else w

    def head(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        return model.get_submodule(self.final_norm), model.get_submodule(self.lm_head)

    def to_dict(self) -> dict:
        return asdict(self)


_LLAMA = Layout("model.layers", "mlp.down_proj", "model.norm", "lm_head")
_GPT2 = Layout("transformer.h", "mlp.c_proj", "transformer.ln_f", "lm_head", transposed=True)
_GPTJ = Layout("transformer.h", "mlp.fc_out", "transformer.ln_f", "lm_head")
_NEOX = Layout("gpt_neox.layers", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "embed_out")

KNOWN_LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
}

_CONFIG_EXAMPLE = """\
model:
  layout:
    blocks: model.layers        # ModuleList of transformer blocks
    mlp_out: mlp.down_proj      # the edited projection, relative to a block
    final_norm: model.norm
    lm_head: lm_head
    transposed: false           # true if the weight is stored (d_in, d_out)"""


def layout_for(model: nn.Module, override: dict | Layout | None = None) -> Layout:
    """The layout of `model`: from `override` (config) if given, else by `config.model_type`."""
    if isinstance(override, Layout):
        layout = override
    elif override:
        unknown = set(override) - set(Layout.__dataclass_fields__)
        if unknown:
            raise ValueError(f"model.layout has unknown keys {sorted(unknown)}; expected:\n{_CONFIG_EXAMPLE}")
        layout = Layout(**override)
    else:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in KNOWN_LAYOUTS:
            raise ValueError(
                f"Unsupported architecture {model_type!r}. Supported: {', '.join(sorted(KNOWN_LAYOUTS))}.\n"
                f"Name the modules in config instead, for example:\n{_CONFIG_EXAMPLE}"
            )
        layout = KNOWN_LAYOUTS[model_type]
    _check(model, layout)
    return layout


def _check(model: nn.Module, layout: Layout) -> None:
    for name in (layout.blocks, layout.module_name(0), layout.final_norm, layout.lm_head):
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"layout names module {name!r}, which this model does not have: {exc}") from exc
    if not isinstance(getattr(layout.edited_module(model, 0), "weight", None), torch.Tensor):
        raise ValueError(f"{layout.module_name(0)} has no weight matrix to edit")
