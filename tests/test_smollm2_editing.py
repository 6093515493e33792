"""ROME, MEMIT and EMMET on the real SmolLM2 with real CounterFact records and corpus statistics."""

import pytest

from conftest import SHARED
from editscale import corpus, data, editing, keys, stats
from editscale.settings import EditSettings

pytestmark = [pytest.mark.smollm2, pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]


def _greedy(model, tokenizer, text, n=3):
    inputs = tokenizer(text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


@pytest.fixture(scope="module")
def known_fact(smollm2):
    """The first record (in case_id order) whose true target the unedited model already produces."""
    model, tokenizer, _ = smollm2
    records = data.load_counterfact(SHARED / "counterfact" / "full").to_dict("records")
    for record in records:
        text = record["prompt"].replace("{}", record["subject"])
        if _greedy(model, tokenizer, text).startswith(" " + record["target_true"]):
            return record, text
    pytest.fail("SmolLM2 knows none of the CounterFact facts")


@pytest.fixture(scope="module")
def layer1(smollm2):
    model, tokenizer, layout = smollm2
    texts = corpus.iter_texts(SHARED / "corpus" / "wikipedia-articles.txt")
    C = stats.second_moments(model, tokenizer, layout, [1], texts, max_tokens=20_000, max_length=2048,
                             progress=False)[1].mean()
    return C, keys.context_templates(model, tokenizer, seed=0)


# MEMIT moves a single key s/(1+s) of the way, s = kᵀC⁻¹k/λ ≈ d_in/λ. The Llama-3 setting
# λ = 15000 (d_in 14336) gives about ½; SmolLM2's d_in is 1536, so λ = 100 gives about 94%.
@pytest.mark.parametrize("algorithm,options", [("rome", {}), ("memit", {"mom2_update_weight": 100.0}),
                                               ("emmet", {"emmet_lambda": 0.1})])
def test_edit_rewrites_a_known_fact(smollm2, known_fact, layer1, algorithm, options):
    model, tokenizer, layout = smollm2
    record, text = known_fact
    C, templates = layer1
    cfg = editing.EditConfig(algorithm, 1, edit=EditSettings(**options))
    edit = editing.edit_batch(model, tokenizer, layout, cfg, [record], templates, editing.prepare(cfg, C))
    editing.apply_delta(model, layout, 1, edit.delta)
    try:
        after = _greedy(model, tokenizer, text)
    finally:
        editing.revert_delta(model, layout, 1, edit.delta)
    assert after.startswith(" " + record["target_new"]), (record["case_id"], after)
    assert _greedy(model, tokenizer, text).startswith(" " + record["target_true"])  # reverted
