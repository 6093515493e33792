"""Model presets: a new model's settings in one name, each value with the reference file it comes from.

    model: {preset: llama3-8b, device: cuda}          # a config: every key set beside it overrides
    Editor(model, tok, preset="llama3-8b")            # the library
    python -m editscale edit --preset llama3-8b ...   # the command line

A preset is a partial config (`Preset.config`): the model (hub id, revision, dtype, layout), the
edit layers, λ and AlphaEdit's settings, the value optimisation and C's corpus and budget. Values are
the references' hparams files for that model (docs/fidelity.md, "Presets", lists every choice
between disagreeing references and every place editscale differs); the architecture's shapes are
its public config.json's. Adding a model is one entry in `PRESETS`.

Where a value comes from, by tag (repository @ commit : hparams file):
"""

from __future__ import annotations

from dataclasses import dataclass

REFS = {
    "AE": "jianghoucheng/AlphaEdit@f5248d3",
    "EE": "zjunlp/EasyEdit@14cea82",
    "MM": "kmeng01/memit@80426fd",
    "RLS": "Euphoria040201/RLSEdit@6688b89",
    "NAS": "SasyaTitech/NAS@5acab48",
    "HF": "the model's config.json on the hub",
    "ES": "editscale's choice (docs/fidelity.md, Presets)",
}
__doc__ += "".join(f"\n    {tag:4} {where}" for tag, where in REFS.items()) + "\n"

# What every 7-8B preset shares: C from Wikipedia through `datasets` (the reference's 20200501.en dump
# is no longer on the hub; EasyEdit's 20231101.en is), bounded by tokens where the references count
# 100,000 articles, and bf16 weights (one 80 GB GPU holds the model and C of five layers).
WIKIPEDIA = "hf:wikimedia/wikipedia:20231101.en:train"
_SHARED_SOURCES = {
    "stats.corpus": "EE:easyeditor/models/rome/layer_stats.py (mom2_dataset wikipedia; ES: by name)",
    "stats.max_tokens": "ES (the references: mom2_n_samples 100000 articles)",
    "model.dtype": "ES",
    "model.revision": "ES (unpinned: set model.revision to a hub commit before a long run)",
}


@dataclass(frozen=True)
class Preset:
    name: str
    spec: str  # hub id
    architecture: str  # transformers' model_type
    n_layers: int
    context: int  # tokens: max_position_embeddings, or n_positions
    layout: dict  # models.Layout's fields, from the references' module templates
    layers: tuple[int, ...]  # the edit window
    edit: dict
    values: dict
    stats: dict
    sources: dict  # "section.key" -> where its value comes from (a tag of REFS and the file)
    dtype: str = "bfloat16"
    revision: str | None = None
    notes: str = ""

    def config(self) -> dict:
        """The partial config this preset stands for: what `model: {preset: name}` expands to."""
        return {"model": {"spec": self.spec, "revision": self.revision, "dtype": self.dtype, "layout": dict(self.layout)},
                "layer": list(self.layers), "edit": dict(self.edit), "values": dict(self.values),
                "stats": dict(self.stats)}

    def source(self, key: str) -> str:
        """Where the value of `key` ("edit.mom2_update_weight", "layer") comes from."""
        return {**_SHARED_SOURCES, **self.sources}[key]


_LLAMA_LAYOUT = {"blocks": "model.layers", "mlp_out": "mlp.down_proj", "final_norm": "model.norm", "lm_head": "lm_head",
                 "transposed": False}


def _ae_llama(name: str, spec: str, context: int, max_length, notes: str = "", shape_source: str = "HF",
              revision: str | None = None) -> Preset:
    """AlphaEdit's Llama3-8B values (MEMIT and AlphaEdit files), which RLSEdit, NAS and EasyEdit's
    Llama-3.1 AlphaEdit file repeat."""
    memit, alpha = "AE:hparams/MEMIT/Llama3-8B.json", "AE:hparams/AlphaEdit/Llama3-8B.json"
    return Preset(
        name, spec, "llama", 32, context, _LLAMA_LAYOUT, (4, 5, 6, 7, 8),
        edit={"mom2_update_weight": 15000.0, "nullspace_threshold": 0.02, "alphaedit_l2": 10.0},
        values={"lr": 0.1, "steps": 25, "weight_decay": 0.5, "clamp_factor": 0.75, "kl_factor": 0.0625},
        stats={"corpus": WIKIPEDIA, "max_tokens": 10_000_000, "max_length": max_length},
        sources={"model.spec": f"{shape_source} (AE:README.md runs Meta-Llama-3-8B-Instruct)",
                 "model.layout": f"{memit} (rewrite_module_tmp, layer_module_tmp, ln_f_module, lm_head_module)",
                 "layer": memit, "edit.mom2_update_weight": memit, "edit.nullspace_threshold": alpha,
                 "edit.alphaedit_l2": f"{alpha} (EE:hparams/AlphaEdit/llama3-8b.yaml has 1 since 75fe939)",
                 **{f"values.{k}": memit for k in ("lr", "steps", "weight_decay", "clamp_factor", "kl_factor")},
                 "stats.max_length": f"{shape_source} ({'the context' if max_length == 'auto' else 'ES: capped'})",
                 "n_layers": shape_source, "context": shape_source,
                 **({"model.revision": "ES (config/paper-llama3-8b.yaml: a commit of 2024 public checkouts)"}
                    if revision else {})},
        revision=revision, notes=notes)


def _qwen(name: str, spec: str, context: int) -> Preset:
    """RLSEdit's and NAS's Qwen2.5-7B(-Instruct) values, the files behind their MEMIT and AlphaEdit
    baselines (EasyEdit's qwen2.5-7b.yaml carries its generic profile instead: layers 4-8, clamp 4)."""
    memit, alpha = "RLS:hparams/MEMIT/Qwen2.5-7B.json", "RLS:hparams/AlphaEdit/Qwen2.5-7B.json"
    return Preset(
        name, spec, "qwen2", 28, context, _LLAMA_LAYOUT, (7, 8, 9, 10, 11),
        edit={"mom2_update_weight": 15000.0, "nullspace_threshold": 0.02, "alphaedit_l2": 10.0},
        values={"lr": 0.1, "steps": 25, "weight_decay": 0.5, "clamp_factor": 0.75, "kl_factor": 0.0625},
        stats={"corpus": WIKIPEDIA, "max_tokens": 10_000_000, "max_length": 4096},
        sources={"model.spec": f"{memit} (model_name)", "model.layout": f"{memit} (module templates)",
                 "layer": f"{memit} (= NAS:hparams/MEMIT/Qwen2p5-7B.json)", "edit.mom2_update_weight": memit,
                 "edit.nullspace_threshold": alpha, "edit.alphaedit_l2": alpha,
                 **{f"values.{k}": memit for k in ("lr", "steps", "weight_decay", "clamp_factor", "kl_factor")},
                 "stats.max_length": "AE:rome/layer_stats.py (qwen2: 4096)", "n_layers": "HF", "context": "HF"},
        notes="" if "instruct" in name else "the base model: no reference publishes its results; the Instruct "
        "model's values (EasyEdit's qwen2.5-7b.yaml differs: layers 4-8, clamp 4, lr 0.5, decay 1e-3)")


_MEMIT_GPTJ, _ALPHA_GPTJ = "MM:hparams/MEMIT/EleutherAI_gpt-j-6B.json", "AE:hparams/AlphaEdit/EleutherAI_gpt-j-6B.json"
_MEMIT_GPT2, _ALPHA_GPT2 = "MM:hparams/MEMIT/gpt2-xl.json", "AE:hparams/AlphaEdit/gpt2-xl.json"
_MISTRAL = "EE:hparams/MEMIT/mistral-7b.yaml"
_VALUE_KEYS = ("lr", "steps", "weight_decay", "clamp_factor", "kl_factor")

PRESETS: dict[str, Preset] = {p.name: p for p in [
    _ae_llama("llama3-8b", "meta-llama/Meta-Llama-3-8B", 8192, "auto",
              revision="62bd457b6fe961a42a631306577e622c83876cb6"),
    _ae_llama("llama3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", 8192, "auto"),
    _ae_llama("llama3.1-8b", "meta-llama/Llama-3.1-8B", 131072, 8192,
              notes="no reference has a MEMIT file for Llama-3.1; EasyEdit's AlphaEdit llama3.1-8b.yaml repeats "
              "AlphaEdit's Llama-3 values, used here; C's texts capped at Llama-3's 8192 tokens (the references "
              "would read 131072)"),
    _qwen("qwen2.5-7b", "Qwen/Qwen2.5-7B", 131072),
    _qwen("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 32768),
    Preset(
        "mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral", 32, 32768, _LLAMA_LAYOUT, (4, 5, 6, 7, 8),
        edit={"mom2_update_weight": 15000.0, "nullspace_threshold": 0.02, "alphaedit_l2": 10.0},
        values={"lr": 0.5, "steps": 25, "weight_decay": 0.001, "clamp_factor": 4.0, "kl_factor": 0.0625},
        stats={"corpus": WIKIPEDIA, "max_tokens": 10_000_000, "max_length": 4096},
        sources={"model.spec": f"{_MISTRAL} (model_name Mistral-7B-v0.1)", "model.layout": _MISTRAL,
                 "layer": _MISTRAL, "edit.mom2_update_weight": _MISTRAL,
                 "edit.nullspace_threshold": "ES (no reference has AlphaEdit for Mistral: AlphaEdit's own default)",
                 "edit.alphaedit_l2": "ES (no reference has AlphaEdit for Mistral: AlphaEdit's own default)",
                 **{f"values.{k}": _MISTRAL for k in _VALUE_KEYS},
                 "stats.max_length": "AE:rome/layer_stats.py (mistral: the sliding window, 4096)",
                 "n_layers": "HF", "context": "HF"},
        notes="EasyEdit's file is the only reference, and publishes no results"),
    Preset(
        "gpt-j-6b", "EleutherAI/gpt-j-6B", "gptj", 28, 2048,
        {"blocks": "transformer.h", "mlp_out": "mlp.fc_out", "final_norm": "transformer.ln_f", "lm_head": "lm_head",
         "transposed": False}, (3, 4, 5, 6, 7, 8),
        edit={"mom2_update_weight": 15000.0, "nullspace_threshold": 0.02, "alphaedit_l2": 10.0},
        values={"lr": 0.5, "steps": 25, "weight_decay": 0.5, "clamp_factor": 0.75, "kl_factor": 0.0625},
        stats={"corpus": WIKIPEDIA, "max_tokens": 10_000_000, "max_length": "auto"},
        sources={"model.spec": "AE:hparams/MEMIT/EleutherAI_gpt-j-6B.json (model_name)", "model.layout": _MEMIT_GPTJ,
                 "layer": _MEMIT_GPTJ, "edit.mom2_update_weight": _MEMIT_GPTJ, "edit.nullspace_threshold": _ALPHA_GPTJ,
                 "edit.alphaedit_l2": _ALPHA_GPTJ, **{f"values.{k}": _MEMIT_GPTJ for k in _VALUE_KEYS},
                 "stats.max_length": "HF (n_positions)", "n_layers": "HF", "context": "HF"}),
    Preset(
        "gpt2-xl", "openai-community/gpt2-xl", "gpt2", 48, 1024,
        {"blocks": "transformer.h", "mlp_out": "mlp.c_proj", "final_norm": "transformer.ln_f", "lm_head": "lm_head",
         "transposed": True}, (13, 14, 15, 16, 17),
        edit={"mom2_update_weight": 20000.0, "nullspace_threshold": 0.02, "alphaedit_l2": 10.0},
        values={"lr": 0.5, "steps": 20, "weight_decay": 0.5, "clamp_factor": 0.75, "kl_factor": 0.0625},
        stats={"corpus": WIKIPEDIA, "max_tokens": 10_000_000, "max_length": "auto"},
        sources={"model.spec": "AE:hparams/MEMIT/gpt2-xl.json (model_name gpt2-xl, now openai-community/gpt2-xl)",
                 "model.layout": f"{_MEMIT_GPT2} (lm_head tied to transformer.wte)", "layer": _MEMIT_GPT2,
                 "edit.mom2_update_weight": _MEMIT_GPT2, "edit.nullspace_threshold": _ALPHA_GPT2,
                 "edit.alphaedit_l2": _ALPHA_GPT2, **{f"values.{k}": _MEMIT_GPT2 for k in _VALUE_KEYS},
                 "stats.max_length": "HF (n_positions)", "n_layers": "HF", "context": "HF",
                 "model.dtype": "ES (the model's own float32: 1.5B parameters fit any GPU)"},
        dtype="float32"),
]}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


def expand(config: dict) -> dict:
    """`config` with its `model.preset` replaced by what the preset stands for; every key the config
    sets itself (in any section, and `layer`) is kept over the preset's."""
    model = config.get("model") or {}
    if "preset" not in model:
        return config
    preset = get(model["preset"]).config()
    out = dict(config)
    out["model"] = {**preset["model"], **{k: v for k, v in model.items() if k != "preset"}}
    out["layer"] = config.get("layer", preset["layer"])
    for section in ("edit", "values", "stats"):
        out[section] = {**preset[section], **(config.get(section) or {})}
    return out
