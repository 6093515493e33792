"""Metric definitions on a model whose logits are known by construction, and batched = plain scoring."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from editscale.data import DATASETS
from editscale.evaluation import metrics
from editscale.evaluation.scoring import LowRankEdits, target_nll
from editscale.models.layout import Layout
from editscale.models.tokens import continuation_span, length_batches


class Bigram(nn.Module):
    """logits(next | prev) = table[prev]: every NLL can be written down from the table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        vocab = table.shape[0]
        self.embed = nn.Embedding(vocab, vocab, _weight=torch.eye(vocab))
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].mlp = nn.Linear(vocab, vocab, bias=False)
        nn.init.zeros_(self.blocks[0].mlp.weight)
        self.norm = nn.Identity()
        self.lm_head = nn.Linear(vocab, vocab, bias=False)
        self.lm_head.weight.data = table.T.contiguous()  # one-hot(prev) @ table -> table[prev]
        self.requires_grad_(False)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = self.embed(input_ids)
        h = h + self.blocks[0].mlp(h)
        return type("Out", (), {"logits": self.lm_head(self.norm(h))})()


LAYOUT = Layout("blocks", "mlp", "norm", "lm_head")


@pytest.fixture(params=["bos", "plain"])
def tok(request, bos_tokenizer, plain_tokenizer):
    return {"bos": bos_tokenizer, "plain": plain_tokenizer}[request.param]


def _expected_nll(tok, table, prompt, target):
    full, alone = tok(prompt + target)["input_ids"], tok(prompt)["input_ids"]
    start = next(i for i, (a, b) in enumerate(zip(full, alone + [None])) if a != b)
    logp = torch.log_softmax(table.double(), -1)
    return float(np.mean([-logp[full[i - 1], full[i]] for i in range(start, len(full))]))


def test_nll_is_the_mean_over_target_tokens(tok):
    table = torch.randn(len(tok), len(tok), generator=torch.Generator().manual_seed(0))
    pairs = [("The mother tongue of Danielle Darrieux is", " French"),
             ("Toyota is owned by", " Volkswagen Group of America"),  # several tokens
             ("Angola is located in", " Africa")]
    got = target_nll(Bigram(table), tok, LAYOUT, pairs, batch_size=2)
    expected = [_expected_nll(tok, table, p, t) for p, t in pairs]
    assert len(tok(pairs[1][1])["input_ids"]) > 2
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def _nll_rows(case, kind, index, new, true):
    return [(case, kind, index, "p", "new", new), (case, kind, index, "p", "true", true)]


def test_per_case_definitions_with_ties():
    rows = (_nll_rows(1, "rewrite", 0, 0.5, 2.0)  # new likelier: ES 100
            + _nll_rows(1, "paraphrase", 0, 1.0, 1.0)  # a tie counts as failure
            + _nll_rows(1, "paraphrase", 1, 0.1, 3.0)
            + _nll_rows(1, "neighborhood", 0, 2.0, 1.0)  # true likelier: success
            + _nll_rows(1, "neighborhood", 1, 1.0, 2.0)
            + _nll_rows(1, "neighborhood", 2, 1.5, 1.5))
    table = pd.DataFrame(rows, columns=metrics.NLL_COLUMNS)
    case = metrics.per_case(table).iloc[0]
    assert case.ES == 100 and case.PS == 50 and case.NS == pytest.approx(100 / 3)
    assert case.EM == pytest.approx(100 * (math.exp(-0.5) - math.exp(-2.0)))
    assert case.PM == pytest.approx(100 * (0 + math.exp(-0.1) - math.exp(-3.0)) / 2)
    assert case.NM == pytest.approx(100 * ((math.exp(-1) - math.exp(-2)) + (math.exp(-2) - math.exp(-1)) + 0) / 3)
    assert (case.n_rewrite, case.n_paraphrase, case.n_neighborhood) == (1, 2, 3)


def test_aggregate_score_is_the_harmonic_mean_and_ci_is_seeded():
    rng = np.random.default_rng(1)
    cases = pd.DataFrame({"case_id": range(50), **{m: rng.uniform(0, 100, 50) for m in DATASETS["counterfact"].metrics},
                          "n_rewrite": 1, "n_paraphrase": 2, "n_neighborhood": 10, "format": "full"})
    agg = metrics.aggregate(cases).set_index("metric")
    es, ps, ns = (cases[m].mean() for m in ("ES", "PS", "NS"))
    assert agg.loc["Score", "mean"] == pytest.approx(3 / (1 / es + 1 / ps + 1 / ns))
    assert agg.loc["ES", "ci_low"] < es < agg.loc["ES", "ci_high"]
    assert agg.loc["ES", "std"] == pytest.approx(cases.ES.std())
    assert (agg["format"] == "full").all() and (agg["n_neighborhood"] == 10).all()
    again = metrics.aggregate(cases).set_index("metric")
    pd.testing.assert_frame_equal(agg, again)
    other = metrics.aggregate(cases, seed=5).set_index("metric")
    assert not np.allclose(agg.ci_low, other.ci_low)
    assert metrics.harmonic_mean([50, 0, 100]) == 0


def test_aggregate_refuses_undefined_metrics_naming_the_cases():
    """A case without neighbourhood prompts has NS NaN: never averaged into a summary, always named."""
    rows = _nll_rows(7, "rewrite", 0, 0.5, 2.0) + _nll_rows(7, "paraphrase", 0, 0.5, 2.0) \
        + _nll_rows(8, "rewrite", 0, 0.5, 2.0) + _nll_rows(8, "paraphrase", 0, 0.5, 2.0) \
        + _nll_rows(8, "neighborhood", 0, 2.0, 1.0)
    cases = metrics.per_case(pd.DataFrame(rows, columns=metrics.NLL_COLUMNS)).assign(format="full")
    with pytest.raises(ValueError, match=r"undefined \(NaN\) for cases \[7\]"):
        metrics.aggregate(cases)
    assert len(metrics.aggregate(cases[cases.case_id == 8]))


RECORDS = pd.DataFrame({
    "case_id": [1, 2], "subject": ["Danielle Darrieux", "Angola"],
    "prompt": ["The mother tongue of {} is", "{} is located in"],
    "target_new": ["English", "Antarctica"], "target_true": ["French", "Africa"],
    "paraphrase_prompts": [["Danielle Darrieux speaks", "Darrieux was born. Danielle Darrieux's language is"],
                           ["Angola belongs to the continent of", "Where is Angola? In"]],
    "neighborhood_prompts": [["Michel Rocard is a native speaker of", "Jean Gabin speaks"],
                             ["Ghana is in", "Algeria is a part of the continent of"]],
    "generation_prompts": [[], []], "format": ["full", "full"],
})


def test_batched_scoring_equals_one_prompt_at_a_time(tiny):
    """Padding and positions must not leak between rows of a batch."""
    model, tok, layout = tiny
    batched = metrics.score(model, tok, RECORDS, layout=layout, batch_size=64)
    pairs = list(zip(batched.prompt, metrics.prompt_table(RECORDS).continuation))
    single = [float(target_nll(model, tok, layout, [p], batch_size=1)[0]) for p in pairs]
    np.testing.assert_allclose(batched.nll.to_numpy(), single, rtol=1e-5, atol=1e-5)
    # A plain full forward of one prompt, by hand.
    prompt, cont = pairs[3]
    full, alone = tok(prompt + cont)["input_ids"], tok(prompt)["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1)
    by_hand = -np.mean([float(logp[i - 1, full[i]]) for i in range(len(alone), len(full))])
    assert batched.nll.iloc[3] == pytest.approx(by_hand, rel=1e-5)
    assert len(batched) == 2 * (1 + 2 + 2) * 2
    # Batches cut by a padded-token budget instead of a row count: the same numbers.
    budgeted = metrics.score(model, tok, RECORDS, layout=layout, batch_size=64, max_tokens=40)
    np.testing.assert_allclose(budgeted.nll.to_numpy(), single, rtol=1e-5, atol=1e-5)


def test_length_batches_cover_every_row_once_within_budget():
    lengths = [5, 30, 7, 7, 12, 50, 3, 9, 9, 9]
    batches = length_batches(lengths, max_tokens=30, batch_size=3)  # shortest first, as scoring uses it
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 30
    assert [5] in batches  # longer than the budget: alone
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)


def test_per_row_edits_equal_applying_each_edit(tiny):
    """Independent dense edits scored together equal edit -> score -> revert, one at a time."""
    model, tok, layout = tiny
    w = layout.weight(model, 1)
    g = torch.Generator().manual_seed(0)
    deltas = [0.5 * torch.randn(w.shape, generator=g) for _ in range(2)]
    together = metrics.score(model, tok, RECORDS, layout=layout, edits=LowRankEdits.dense(deltas),
                             case_edit={1: 0, 2: 1}, layer=1)
    for e, case in enumerate([1, 2]):
        with torch.no_grad():
            w.add_(deltas[e])
        alone = metrics.score(model, tok, RECORDS[RECORDS.case_id == case], layout=layout)
        with torch.no_grad():
            w.sub_(deltas[e])
        mine = together[together.case_id == case]
        np.testing.assert_allclose(mine.nll.to_numpy(), alone.nll.to_numpy(), atol=1e-4)
    unedited = metrics.score(model, tok, RECORDS, layout=layout)
    assert not np.allclose(unedited.nll, together.nll, atol=1e-3)


def test_shared_rows_score_a_prefix_inside_the_row_that_extends_it():
    """A pair whose input is a prefix of another's, under the same edit, is scored in that row;
    a pair under another edit never shares; every pair lands in exactly one row."""
    from editscale.evaluation.scoring import shared_rows

    inputs = [(5, 3), (5, 3, 2), (5, 3, 9), (5,), (7, 1), (5, 3)]
    edits = [0, 0, 0, 0, 0, 1]
    rows = shared_rows(inputs, edits)
    assert sorted(i for pairs in rows.values() for i in pairs) == list(range(len(inputs)))
    for (ids, edit), pairs in rows.items():
        assert all(edits[i] == edit and ids[: len(inputs[i])] == tuple(inputs[i]) for i in pairs)
    assert len(rows) == 4  # (5, 3, 9) with (5,), (5, 3, 2) with (5, 3), (7, 1), and (5, 3) under edit 1


def test_shared_rows_halve_the_forward_rows_and_change_no_number(tiny):
    """The tiny records' targets are one token each here or not: either way every pair's NLL is
    the one it gets alone, and pairs sharing a prompt take one row when a target is one token."""
    from editscale.evaluation.scoring import shared_rows

    model, tok, layout = tiny
    records = RECORDS.assign(target_true=["the", "Africa"])  # " the" is one token here, " Africa" five
    table = metrics.prompt_table(records)
    spans = [continuation_span(tok, p, c) for p, c in zip(table.prompt, table.continuation)]
    rows = shared_rows([s.ids[: s.end - 1] for s in spans], [-1] * len(spans))
    # Prompts where the new or the true target is one token: their two pairs need one row.
    by_prompt = table.assign(one=[s.end - s.start == 1 for s in spans]).groupby(["case_id", "prompt"]).one.any()
    assert by_prompt.sum() > 0 and len(rows) <= len(spans) - by_prompt.sum()
    batched = metrics.score(model, tok, records, layout=layout, batch_size=64)
    single = [float(target_nll(model, tok, layout, [p], batch_size=1)[0]) for p in zip(table.prompt, table.continuation)]
    np.testing.assert_allclose(batched.nll.to_numpy(), single, rtol=1e-5, atol=1e-5)


def test_score_rule_at_the_edges_for_one_set_and_for_many():
    """Score is the harmonic mean of the headline metrics; NaN where any is NaN (undefined, never 0),
    0 where any is 0 or less; along the last axis for bootstrap replicates."""
    assert metrics.harmonic_mean([30.0, 60.0, 90.0]) == pytest.approx(3 / (1 / 30 + 1 / 60 + 1 / 90))
    assert np.isnan(metrics.harmonic_mean([float("nan"), 50.0, 50.0]))
    assert metrics.harmonic_mean([0.0, 50.0, 50.0]) == 0.0
    assert np.isnan(metrics.harmonic_mean([0.0, float("nan"), 50.0]))  # undefined wins over 0
    many = metrics.harmonic_mean(np.array([[30.0, 60.0, 90.0], [float("nan"), 1.0, 1.0], [-1.0, 5.0, 5.0]]))
    assert many.shape == (3,) and many[0] == pytest.approx(49.0909, abs=1e-3) and np.isnan(many[1])
    assert many[2] == 0.0
