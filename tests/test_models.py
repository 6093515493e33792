import pytest
import torch

from editscale import models
from editscale.models import loading
from editscale.models.layout import KNOWN_LAYOUTS, Layout, layout_for


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tiny_models_load_with_layout(kind, tiny_llama_dir, tiny_gpt2_dir):
    folder = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[kind]
    model, tokenizer, layout = models.load(str(folder))
    assert layout == KNOWN_LAYOUTS[kind]
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None
    cfg = model.config
    d_model = cfg.hidden_size
    d_ff = cfg.intermediate_size if kind == "llama" else 4 * cfg.n_embd
    w = layout.weight(model, 1)
    assert w.shape == (d_model, d_ff)  # (d_out, d_in) for both storage orders


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_weight_view_is_the_module_map(kind, tiny_llama_dir, tiny_gpt2_dir):
    """W from the layout maps the module's input to its output, whatever the storage order."""
    folder = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[kind]
    model, _, layout = models.load(str(folder))
    module = layout.edited_module(model, 0)
    w = layout.weight(model, 0)
    k = torch.randn(3, w.shape[1])
    bias = module.bias if getattr(module, "bias", None) is not None else 0
    torch.testing.assert_close(module(k), k @ w.T + bias)
    # In-place edits through the view reach the module.
    before = module(k).clone()
    delta = torch.randn_like(w) * 0.01
    w.add_(delta)
    torch.testing.assert_close(module(k) - before, k @ delta.T, rtol=1e-4, atol=1e-5)


def test_unknown_architecture_names_supported_ones_and_config(tiny_llama_dir):
    model, _, _ = models.load(str(tiny_llama_dir))
    model.config.model_type = "mystery"
    with pytest.raises(ValueError) as err:
        layout_for(model)
    message = str(err.value)
    assert "mystery" in message and "gpt2" in message and "llama" in message and "mlp_out:" in message
    # ...and the config route works.
    custom = layout_for(model, {"blocks": "model.layers", "mlp_out": "mlp.down_proj",
                                "final_norm": "model.norm", "lm_head": "lm_head"})
    assert custom == Layout("model.layers", "mlp.down_proj", "model.norm", "lm_head")


def test_layout_naming_a_missing_module_fails(tiny_llama_dir):
    model, _, _ = models.load(str(tiny_llama_dir))
    with pytest.raises(ValueError, match="mlp.nope"):
        layout_for(model, {"blocks": "model.layers", "mlp_out": "mlp.nope",
                           "final_norm": "model.norm", "lm_head": "lm_head"})


def test_missing_gguf_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        models.load(str(tmp_path / "missing.gguf"))


@pytest.mark.smollm2
def test_smollm2_knows_danielle_darrieux(smollm2):
    model, tokenizer, layout = smollm2
    assert layout.weight(model, 1).shape == (576, 1536)
    inputs = tokenizer("The mother tongue of Danielle Darrieux is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    continuation = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    assert continuation.startswith(" French")


def test_a_gguf_is_hash_checked_before_conversion(tmp_path, monkeypatch):
    """Wherever the embedded GGUF came from (an installed package, the cache), a wrong file is
    refused before any conversion and nothing is cached."""
    monkeypatch.setenv("EDITSCALE_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"not the model")
    with pytest.raises(RuntimeError, match=r"has sha256 .* expected b179c952"):
        models.gguf_to_folder(fake, sha256=loading._SMOLLM2_SHA256)
    assert not list((tmp_path / "cache" / "models").glob("*"))
