"""The live protocol's reading of a continuation, pinned against WanliYoung/Revisit-Editing-Evaluation
(`easyeditor/evaluate/evaluate_utils.py`: `normalize_answer`, `exact_match_score`; locality in
`easyeditor/editors/editor.py`: post == pre token lists), and its per-case metrics."""

import pandas as pd
import pytest

from editscale.evaluation import live, metrics

TINY = ("llama",)


@pytest.mark.parametrize("text,normal", [
    ("The Eiffel Tower.", "eiffel tower"),  # lower case, punctuation, article, whitespace
    ("  Paris,   France ", "paris france"),
    ("U.S.A", "usa"),  # punctuation goes before articles are matched
    ("theatre", "theatre"),  # an article only as a whole word
    ("A-ha", "aha"),  # "a-ha" loses its hyphen first, so "a" is no longer a word
])
def test_normalise_is_wilds_normalize_answer(text, normal):
    assert live.normalise(text) == normal


@pytest.mark.parametrize("continuation,answer,hit", [
    (" Paris", "Paris", True),
    (" Paris, the capital of", "Paris", True),  # WILD cuts at "." and needs equality; the prefix asks the same
    (" the Paris of", "Paris", True),  # a leading article is normalised away, as WILD's
    (" paris", "Paris", True),
    (" Parisian food", "Paris", False),  # the answer's last word must end
    (" London", "Paris", False),
    ("", "Paris", False),
    (" New York City", "New York", True),
    (" New", "New York", False),  # cut short: the whole answer is needed
])
def test_a_continuation_hits_when_it_starts_with_the_answer(continuation, answer, hit):
    assert live.starts_with(continuation, answer) is hit


def _table(rows):
    return pd.DataFrame(rows, columns=["case_id", "prompt_kind", "prompt_index", "tokens", "hit"])


def test_per_case_counterfact_reads_hits_per_kind_and_unchanged_against_the_unedited():
    edited = _table([(1, "rewrite", 0, [5], True), (1, "paraphrase", 0, [5], True), (1, "paraphrase", 1, [6], False),
                     (1, "neighborhood", 0, [7, 8], True), (1, "neighborhood", 1, [9], False)])
    unedited = _table([(1, "rewrite", 0, [4], False), (1, "paraphrase", 0, [4], False),
                       (1, "paraphrase", 1, [6], False), (1, "neighborhood", 0, [7, 8], True),
                       (1, "neighborhood", 1, [9, 9], False)])
    out = metrics.per_case(edited, dataset="counterfact", reference=unedited, protocol=metrics.LIVE).iloc[0]
    assert (out.ES, out.PS, out.NS) == (100, 50, 50)
    assert out.NU == 50  # [9] against [9, 9]: a continuation that stops earlier has changed
    assert out.n_paraphrase == 2 and "EM" not in out  # no magnitudes without likelihoods


def test_per_case_zsre_reads_locality_as_unchanged_and_refuses_a_missing_reference():
    edited = _table([(3, "rewrite", 0, [1], True), (3, "paraphrase", 0, [1], False),
                     (3, "neighborhood", 0, [2], True)])
    out = metrics.per_case(edited, dataset="zsre", reference=edited, protocol=metrics.LIVE).iloc[0]
    assert (out.Efficacy, out.Paraphrase, out.Specificity, out.Locality) == (100, 0, 100, 100)
    assert pd.isna(out.Portability)
    with pytest.raises(ValueError, match="no unedited continuations for cases \\[3\\]"):
        metrics.per_case(edited, dataset="zsre", reference=edited.assign(case_id=4), protocol=metrics.LIVE)


def test_live_scoring_judges_what_the_model_says(tiny):
    """A record whose new target is the model's own greedy answer scores ES 100 under `live`; its true
    target, which the model does not say, scores NS 0 on the same prompt used as a neighbour."""
    model, tokenizer, layout = tiny
    prompt = "the man said that"
    said = metrics.score(model, tokenizer, _record("x", "y", prompt), layout=layout, protocol=metrics.LIVE)
    first = said.text.iloc[0].split()[0]
    records = _record(first, first + "zz", prompt)
    table = metrics.score(model, tokenizer, records, layout=layout, protocol=metrics.LIVE)
    assert set(table.prompt_kind) == {"rewrite", "paraphrase", "neighborhood"} and len(table) == 3
    cases = metrics.per_case(table, dataset="counterfact", protocol=metrics.LIVE).iloc[0]
    assert cases.ES == 100 and cases.PS == 100 and cases.NS == 0 and cases.NU == 100


def _record(new, true, prompt):
    return pd.DataFrame([dict(case_id=0, dataset="counterfact", format="full", subject="man", prompt=prompt.replace(
        "man", "{}"), target_new=new, target_true=true, paraphrase_prompts=[prompt], neighborhood_prompts=[prompt],
        generation_prompts=[])])
