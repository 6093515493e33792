"""Model presets: each names its source for every value, expands into a config that keys beside it
override, and edits a tiny random model of its architecture (its real depth, small widths) on the
CPU through its own layout and layers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import build_tokenizer, covariance_standin

from editscale import Editor, presets, settings
from editscale.evaluation import facts as scoring
from editscale.models.layout import Layout, layout_for

FACT = {"prompt": "{} is a citizen of", "subject": "Danielle Darrieux", "target_new": "Japan",
        "target_true": "France"}


def flat(config: dict) -> dict:
    """{"edit.mom2_update_weight": 15000.0, "layer": [...], ...}: every value a preset sets."""
    out = {}
    for section, value in config.items():
        if isinstance(value, dict) and section != "layout":
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_value_of_a_preset_cites_where_it_comes_from(name):
    preset = presets.get(name)
    for key in [*flat(preset.config()), "n_layers", "context"]:
        source = preset.source(key)  # a KeyError is a value without a source
        assert source.split(":")[0].split(" ")[0] in presets.REFS, (name, key, source)
    assert all(0 <= layer < preset.n_layers for layer in preset.layers)


def test_a_preset_expands_and_every_key_set_beside_it_wins():
    s = settings.parse({"model": {"preset": "qwen2.5-7b-instruct", "device": "cuda", "dtype": "float16"},
                        "values": {"lr": 0.3}, "layer": 9})
    assert (s.model.spec, s.model.dtype, s.model.device) == ("Qwen/Qwen2.5-7B-Instruct", "float16", "cuda")
    assert s.layer == 9 and s.values.lr == 0.3
    assert s.values.clamp_factor == 0.75 and s.edit.mom2_update_weight == 15000.0 and s.stats.max_length == 4096
    plain = settings.parse({"model": {"preset": "gpt2-xl"}})
    assert plain.layer == (13, 14, 15, 16, 17) and plain.values.steps == 20 and plain.model.layout["transposed"]
    with pytest.raises(ValueError, match="unknown model preset 'llama4'.*llama3-8b"):
        settings.parse({"model": {"preset": "llama4"}})


def tiny_of(preset: presets.Preset):
    """A random model of the preset's architecture: its depth, widths of 16, the test tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt = preset.architecture in ("gpt2", "gptj")
    tok = build_tokenizer(add_bos=not gpt)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if gpt:
        widths = dict(n_embd=16, n_layer=preset.n_layers, n_head=2, n_positions=256,
                      **({"rotary_dim": 4} if preset.architecture == "gptj" else {}))
    else:
        widths = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=preset.n_layers, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(preset.architecture, **widths, **common))
    return model.eval().requires_grad_(False), tok


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_edits_a_tiny_model_of_its_architecture_through_its_layout(name):
    preset = presets.get(name)
    model, tok = tiny_of(preset)
    layout = Layout(**preset.layout)
    assert layout_for(model, preset.layout) == layout  # its module names exist in the architecture
    stats = {layer: covariance_standin(model, tok, layout, layer) for layer in preset.layers}
    before = {layer: layout.weight(model, layer).clone() for layer in range(preset.n_layers)}
    editor = Editor(model, tok, algorithm="memit", stats=stats, preset=name, progress=False)
    assert editor.layers == list(preset.layers) and editor.config.values.lr == preset.values["lr"]
    edit = editor.edit([FACT])
    edit.apply(model)
    changed = {layer for layer in range(preset.n_layers) if not torch.equal(layout.weight(model, layer), before[layer])}
    assert changed == set(preset.layers)  # MEMIT's spread over the preset's window, nothing else
    edit.revert(model)
    scored = scoring.evaluate(model, tok, [FACT], edit=edit, layout=layout, protocols=("teacher_forced",))
    assert len(scored) == 1 and 0 <= scored.ES.iloc[0] <= 100


def test_a_preset_refuses_a_model_of_another_architecture():
    model, tok = tiny_of(presets.get("gpt2-xl"))
    with pytest.raises(ValueError, match="preset llama3-8b is for llama models; this model is 'gpt2'"):
        Editor(model, tok, preset="llama3-8b", stats={}, progress=False)


def test_the_command_line_names_the_presets_it_knows():
    done = subprocess.run([sys.executable, "-m", "editscale", "stats", "export", "--preset", "llama4"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--preset llama4: one of llama3-8b" in done.stderr
