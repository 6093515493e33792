"""Applying edits on tiny random models: layouts, sequential batches, checkpoints and resumption."""

import pytest
import torch

from conftest import covariance_standin
from editscale import editing, models, solvers
from editscale.editing import EditConfig
from editscale.keys import compute_keys
from editscale.values import ValueConfig, Values, compute_values

TEMPLATES = ["{}", "The man said that. {}"]
FACTS = [
    {"case_id": 10 + i, "prompt": p, "subject": s, "target_new": t}
    for i, (p, s, t) in enumerate([
        ("The mother tongue of {} is", "Danielle Darrieux", "English"),
        ("{} is located in", "Angola", "Antarctica"),
        ("{} is owned by", "Toyota", "Volkswagen"),
        ("{}, which is in", "The Eiffel Tower", "Rome"),
        ("{} was born in", "Ludwig van Beethoven", "Paris"),
        ("{} plays the", "Jimi Hendrix", "violin"),
    ])
]
FAST = ValueConfig(steps=4)
# λ small against the keys' own scale, so each batch's edit is large enough to change the next one.
SEQ = dict(mom2_update_weight=1e-3, alphaedit_l2=1e-3, values=FAST)


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, tiny_llama_dir, tiny_gpt2_dir):
    folder = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]
    model, tok, layout = models.load(str(folder))
    return model, tok, layout, covariance_standin(model, tok, layout, 1)


def test_apply_and_revert_restore_the_weights(tiny):
    model, _, layout, _ = tiny
    before = layout.weight(model, 1).clone()
    delta = torch.randn_like(before)
    editing.apply_delta(model, layout, 1, delta)
    torch.testing.assert_close(layout.weight(model, 1), before + delta)
    editing.revert_delta(model, layout, 1, delta)
    torch.testing.assert_close(layout.weight(model, 1), before)


def test_non_finite_delta_never_reaches_the_model(tiny):
    model, _, layout, _ = tiny
    before = layout.weight(model, 1).clone()
    delta = torch.zeros_like(before)
    delta[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        editing.apply_delta(model, layout, 1, delta)
    assert torch.equal(layout.weight(model, 1), before)


@pytest.mark.parametrize("algorithm", ["rome", "memit", "emmet", "alphaedit"])
def test_edit_moves_the_key_toward_the_value(tiny, algorithm):
    """After applying ΔW, W's output on each key changes by about its residual (exactly for ROME/EMMET λ=0)."""
    model, tok, layout, C = tiny
    facts = FACTS[:1] if algorithm == "rome" else FACTS[:3]
    cfg = EditConfig(algorithm=algorithm, layer=1, emmet_lambda=0.0, mom2_update_weight=1e-6,
                     nullspace_threshold=1e-2, alphaedit_l2=1e-9, values=FAST)
    edit = editing.edit_batch(model, tok, layout, cfg, facts, TEMPLATES, C)
    from editscale.values import compute_values
    R = compute_values(model, tok, layout, 1, facts, TEMPLATES, FAST).residual.T
    change = edit.delta @ edit.keys
    torch.testing.assert_close(change, R, rtol=1e-3, atol=1e-3 * float(R.abs().max()))
    assert edit.diagnostics["n"] == len(facts) and edit.diagnostics["condition"] > 0


def test_rome_refuses_batches(tiny):
    model, tok, layout, C = tiny
    with pytest.raises(ValueError, match="one fact at a time"):
        editing.edit_batch(model, tok, layout, EditConfig("rome", 1, values=FAST), FACTS[:2], TEMPLATES, C)


def test_duplicate_subject_in_a_batch_is_caught_not_nan(tiny):
    model, tok, layout, C = tiny
    facts = [FACTS[0], dict(FACTS[0], case_id=99, target_new="German"), FACTS[1]]
    before = layout.weight(model, 1).clone()
    with pytest.raises(solvers.IllConditionedError) as err:
        editing.edit_batch(model, tok, layout, EditConfig("emmet", 1, emmet_lambda=0.0, values=FAST),
                           facts, TEMPLATES, C)
    assert "10" in str(err.value) and "99" in str(err.value)
    assert torch.equal(layout.weight(model, 1), before)


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_sequential_resumes_to_the_same_delta(tiny, tmp_path, algorithm):
    """Interrupt after batch 1 (a real exception), rerun, and land on the uninterrupted ΔW."""
    model, tok, layout, C = tiny
    w0 = layout.weight(model, 1).clone()
    cfg = EditConfig(algorithm=algorithm, layer=1, **SEQ)

    full = editing.sequential(model, tok, layout, cfg, FACTS, TEMPLATES, C, 2, tmp_path / "full.safetensors")
    torch.testing.assert_close(layout.weight(model, 1), w0 + full["delta"], rtol=1e-5, atol=1e-6)
    # Back to exactly W0 (reverting would leave rounding), so both runs start from the same weights.
    layout.weight(model, 1).copy_(w0)

    class Interrupt(Exception):
        pass

    def interrupt(batch, _facts):
        if batch == 1:
            raise Interrupt

    ckpt = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupt):
        editing.sequential(model, tok, layout, cfg, FACTS, TEMPLATES, C, 2, ckpt, after_batch=interrupt)
    assert editing.load_checkpoint(ckpt)["batches_done"] == 1  # batch 1's evaluation never finished
    # A fresh process would start from the unedited weights.
    layout.weight(model, 1).copy_(w0)
    seen = []
    resumed = editing.sequential(model, tok, layout, cfg, FACTS, TEMPLATES, C, 2, ckpt,
                                 after_batch=lambda b, _f: seen.append(b))
    assert seen == [1, 2]  # only the batches that were left
    rel = (resumed["delta"] - full["delta"]).norm() / full["delta"].norm()
    assert rel <= 1e-6
    assert [d["batch"] for d in resumed["diagnostics"]] == [0, 1, 2]
    if algorithm == "alphaedit":
        assert resumed["k_prev"].shape[1] == len(FACTS)


def test_sequential_batches_see_earlier_edits(tiny, tmp_path):
    """Batch 2's values are computed on the model edited by batch 1, unlike independent batches."""
    model, tok, layout, C = tiny
    cfg = EditConfig(algorithm="memit", layer=1, **SEQ)
    seq = editing.sequential(model, tok, layout, cfg, FACTS[:4], TEMPLATES, C, 2, tmp_path / "s.safetensors")
    editing.revert_delta(model, layout, 1, seq["delta"])
    first = editing.edit_batch(model, tok, layout, cfg, FACTS[:2], TEMPLATES, C)
    second_alone = editing.edit_batch(model, tok, layout, cfg, FACTS[2:4], TEMPLATES, C)
    assert seq["diagnostics"][0]["delta_norm"] == pytest.approx(first.diagnostics["delta_norm"], rel=1e-5)
    assert seq["diagnostics"][1]["delta_norm"] != pytest.approx(second_alone.diagnostics["delta_norm"], rel=1e-3)
    assert not torch.allclose(seq["delta"], first.delta + second_alone.delta, rtol=1e-4, atol=1e-6)


def test_checkpoint_of_another_run_is_refused(tiny, tmp_path):
    model, tok, layout, C = tiny
    ckpt = tmp_path / "c.safetensors"
    cfg = EditConfig(algorithm="memit", layer=1, values=FAST)
    state = editing.sequential(model, tok, layout, cfg, FACTS[:2], TEMPLATES, C, 2, ckpt)
    editing.revert_delta(model, layout, 1, state["delta"])
    with pytest.raises(ValueError, match="another run"):
        editing.sequential(model, tok, layout, EditConfig("emmet", 1, values=FAST), FACTS[:2], TEMPLATES, C, 2, ckpt)


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_sequential_with_cached_first_batch_matches_computing_it(tiny, tmp_path, algorithm, monkeypatch):
    """Batch 0 runs on the unedited model, so keys and values cached there give the same run."""
    model, tok, layout, C = tiny
    cfg = EditConfig(algorithm=algorithm, layer=1, **SEQ)
    computed = editing.sequential(model, tok, layout, cfg, FACTS[:4], TEMPLATES, C, 2, tmp_path / "a.safetensors")
    editing.revert_delta(model, layout, 1, computed["delta"])
    # Cached the way the values rule does it: all four facts in one chunk, not batch by batch.
    K = compute_keys(model, tok, layout, 1, FACTS[:4], TEMPLATES)
    V = compute_values(model, tok, layout, 1, FACTS[:4], TEMPLATES, FAST, batch_size=4)
    first = (K[:2], Values(*(getattr(V, f)[:2] for f in Values.__dataclass_fields__)))
    optimised = []
    monkeypatch.setattr(editing, "compute_values", lambda *a, **k: optimised.append(a[4]) or compute_values(*a, **k))
    reused = editing.sequential(model, tok, layout, cfg, FACTS[:4], TEMPLATES, C, 2, tmp_path / "b.safetensors",
                                first_batch=first)
    torch.testing.assert_close(reused["delta"], computed["delta"], rtol=1e-4, atol=1e-6)
    assert [d["value_steps"] for d in reused["diagnostics"]] == [d["value_steps"] for d in computed["diagnostics"]]
    assert optimised == [FACTS[2:4]]  # only the second batch was optimised


def test_cached_first_batch_of_the_wrong_size_is_refused(tiny, tmp_path):
    model, tok, layout, C = tiny
    K = compute_keys(model, tok, layout, 1, FACTS[:1], TEMPLATES)
    V = compute_values(model, tok, layout, 1, FACTS[:1], TEMPLATES, FAST)
    with pytest.raises(ValueError, match="batch of 2"):
        editing.sequential(model, tok, layout, EditConfig("memit", 1, **SEQ), FACTS[:4], TEMPLATES, C, 2,
                           tmp_path / "c.safetensors", first_batch=(K, V))
