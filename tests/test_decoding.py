"""Live decoding (evaluation/decoding.py) equals `transformers`' `generate(do_sample=False)` token
for token: each prompt alone, unpadded, with the edit of its row applied to the weights, against
our left-padded, cached batches with every row's edit added per row and nothing applied."""

import random

import pytest
import torch
from conftest import SHARED

from editscale import data, editing
from editscale.evaluation import decoding
from editscale.evaluation.scoring import LowRankEdits

WORDS = "the man said that Paris is in France and rain came home to Japan where music was".split()


def _prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _generate(model, tokenizer, prompt: str, budget: int) -> list[int]:
    """The reference: `generate` on one unpadded prompt, stopped by the same tokens, cut before the stop."""
    stops = decoding.stop_tokens(tokenizer)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                         max_new_tokens=budget, eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    return new[:cut]


def _edits(layout, model, layer: int, n: int, scale: float, seed: int = 0) -> LowRankEdits:
    torch.manual_seed(seed)
    d_out, d_in = layout.weight(model, layer).shape
    norm = layout.weight(model, layer).norm() / (d_out * d_in) ** 0.5
    return LowRankEdits([scale * norm * torch.randn(d_out, 2) for _ in range(n)],
                        [torch.randn(d_in, 2) / d_in ** 0.5 for _ in range(n)])


def _check_against_generate(model, tokenizer, layout, prompts, budgets, edits=None, row_edit=None, layer=None,
                            batch_size=8):
    got = decoding.greedy(model, tokenizer, prompts, budgets, edits=edits, row_edit=row_edit, layer=layer,
                          layout=layout, batch_size=batch_size)
    for i, (prompt, budget) in enumerate(zip(prompts, budgets)):
        e = -1 if row_edit is None else row_edit[i]
        delta = edits.A[e] @ edits.B[e].T if e >= 0 else None
        if delta is not None:
            editing.apply_delta(model, layout, layer, delta)
        try:
            expected = _generate(model, tokenizer, prompt, budget)
        finally:
            if delta is not None:
                editing.revert_delta(model, layout, layer, delta)
        assert got.tokens[i] == expected, (i, prompt, e)
        assert (got.stopped[i] == decoding.LENGTH) == (len(expected) == budget)
    return got


def test_greedy_equals_generate_on_tiny_models(tiny):
    model, tokenizer, layout = tiny
    prompts = _prompts(32)
    budgets = [random.Random(i).randint(1, 9) for i in range(32)]
    plain = _check_against_generate(model, tokenizer, layout, prompts, budgets)
    assert any(len(t) > 1 for t in plain.tokens)
    row_edit = [i % 5 - 1 for i in range(32)]  # −1: no edit; 0–3: four edits
    edited = _check_against_generate(model, tokenizer, layout, prompts, budgets, _edits(layout, model, 1, 4, 60.0),
                                     row_edit, layer=1)
    assert edited.tokens != plain.tokens  # the edits change some continuations


def test_a_window_of_edits_is_added_at_every_layer(tiny):
    model, tokenizer, layout = tiny
    prompts, budgets = _prompts(8, seed=1), [6] * 8
    window = {0: _edits(layout, model, 0, 2, 60.0, seed=1), 2: _edits(layout, model, 2, 2, 60.0, seed=2)}
    row_edit = [i % 3 - 1 for i in range(8)]
    got = decoding.greedy(model, tokenizer, prompts, budgets, edits=window, row_edit=row_edit, layout=layout)
    for i, prompt in enumerate(prompts):
        deltas = {at: (e.A[row_edit[i]] @ e.B[row_edit[i]].T) for at, e in window.items()} if row_edit[i] >= 0 else {}
        for at, delta in deltas.items():
            editing.apply_delta(model, layout, at, delta)
        try:
            assert got.tokens[i] == _generate(model, tokenizer, prompt, 6), i
        finally:
            for at, delta in deltas.items():
                editing.revert_delta(model, layout, at, delta)


def test_budgets_and_shared_rows(tiny):
    """A prompt asked twice under one edit is decoded once, each copy cut to its own budget; a zero
    budget gives nothing; mismatched lengths are refused."""
    model, tokenizer, layout = tiny
    got = decoding.greedy(model, tokenizer, ["the man said", "the man said", "Paris is"], [7, 2, 0], layout=layout)
    assert got.tokens[1] == got.tokens[0][:2] and got.tokens[2] == [] and got.stopped[2] == decoding.LENGTH
    with pytest.raises(ValueError, match="budgets"):
        decoding.greedy(model, tokenizer, ["a"], [1, 2], layout=layout)


def test_stop_tokens_name_eos_and_every_newline_token(tiny):
    _, tokenizer, _ = tiny
    stops = decoding.stop_tokens(tokenizer)
    assert stops[tokenizer.eos_token_id] == decoding.EOS
    newline = tokenizer("a\nb")["input_ids"]
    assert any(stops.get(t) == decoding.NEWLINE for t in newline)
    assert not any(t in stops for t in tokenizer(" Paris is")["input_ids"] if t != tokenizer.bos_token_id)


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")
def test_greedy_equals_generate_on_smollm2(smollm2):
    model, tokenizer, layout = smollm2
    records = data.load_counterfact(SHARED / "counterfact" / "full", unique_subjects=False).head(16)
    prompts = [p for r in records.itertuples() for p in (r.prompt.replace("{}", r.subject), r.neighborhood_prompts[0])]
    budgets = [4 + i % 5 for i in range(len(prompts))]
    assert len(prompts) == 32
    plain = _check_against_generate(model, tokenizer, layout, prompts, budgets, batch_size=32)
    row_edit = [i % 2 for i in range(32)]
    edited = _check_against_generate(model, tokenizer, layout, prompts, budgets,
                                     _edits(layout, model, 8, 2, 400.0, seed=3), row_edit, layer=8, batch_size=32)
    assert edited.tokens != plain.tokens

