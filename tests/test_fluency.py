"""Generation entropy, generation and perplexity."""

import math

import pandas as pd
import pytest
import torch
from conftest import SHARED

from editscale.data import corpus
from editscale.evaluation import fluency


def test_ngram_entropy_by_construction():
    # Bigrams (a b), (b a), (a b): H2 = H(2/3, 1/3); trigrams (a b a), (b a b): H3 = 1 bit.
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert fluency.ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert fluency.ngram_entropy("the the the the the the") == 0.0
    varied = "the cat sat on the mat while a dog ran past the old red barn"
    assert fluency.ngram_entropy(varied) > fluency.ngram_entropy("the cat the cat the cat the cat the cat")


PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is", "Toyota is owned by the company that"]


def test_batched_greedy_generation_equals_one_at_a_time(tiny):
    model, tok, _ = tiny
    together = fluency.generate(model, tok, PROMPTS, max_new_tokens=6)
    alone = [fluency.generate(model, tok, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert together == alone
    reference = model.generate(**tok(PROMPTS[1], return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert together[1] == tok.decode(reference[0, len(tok(PROMPTS[1])["input_ids"]):], skip_special_tokens=True)


def test_top_k_sampling_is_seeded(tiny):
    model, tok, _ = tiny
    a = fluency.generate(model, tok, PROMPTS, max_new_tokens=8, top_k=5, seed=1)
    assert a == fluency.generate(model, tok, PROMPTS, max_new_tokens=8, top_k=5, seed=1)
    assert a != fluency.generate(model, tok, PROMPTS, max_new_tokens=8, top_k=5, seed=2)


def test_perplexity_matches_a_plain_forward(tiny):
    model, tok, _ = tiny
    texts = ["Paris is the capital of France.", "The Eiffel Tower is in Paris, and Paris is in France."]
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        total -= float(logp.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    assert fluency.perplexity(model, tok, texts, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)
    with pytest.raises(ValueError):
        fluency.perplexity(model, tok, [])


def test_generation_entropy_per_case(tiny):
    model, tok, _ = tiny
    records = pd.DataFrame({"case_id": [1, 2], "generation_prompts": [PROMPTS[:2], []]})
    out = fluency.generation_entropy(model, tok, records, max_new_tokens=5)
    assert out.case_id.tolist() == [1] and out.entropy.notna().all() and (out.entropy >= 0).all()


def test_drift_perplexity_reads_the_held_out_corpus(tiny):
    if SHARED is None:
        pytest.skip("needs the offline data folder")
    model, tok, _ = tiny
    ppl = fluency.drift_perplexity(model, tok, max_tokens=500)
    assert math.isfinite(ppl) and ppl > 1
    texts = corpus.iter_texts(SHARED / "corpus" / "wikitext-2-raw-test.txt")
    same = fluency.perplexity(model, tok, texts, max_tokens=500)
    assert ppl == pytest.approx(same)
