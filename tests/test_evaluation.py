"""Batched evaluation of independent edits equals edit -> evaluate -> revert, case by case."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import covariance_standin

from editscale import editing, models
from editscale.editing import keys, values
from editscale.evaluation import metrics
from editscale.evaluation.scoring import LowRankEdits
from editscale.settings import EditSettings, ValueSettings

SUBJECTS = ["Danielle Darrieux", "Angola", "Toyota", "The Eiffel Tower", "Ludwig van Beethoven", "Jimi Hendrix",
            "Paris", "Japan"]
RECORDS = pd.DataFrame({
    "case_id": range(100, 108), "subject": SUBJECTS, "prompt": ["{} is located in"] * 8,
    "target_new": ["Antarctica", "Rome", "Japan", "France", "music", "the river", "Paris", "rain"],
    "target_true": ["Africa", "Paris", "Germany", "Italy", "home", "the man", "London", "snow"],
    "paraphrase_prompts": [[f"Where is {s}? In"] for s in SUBJECTS],
    "neighborhood_prompts": [["Ghana is in", "The man said he is in"]] * 8,
    "generation_prompts": [[]] * 8, "format": ["full"] * 8,
})
TEMPLATES = ["{}", "The man said that. {}"]
FAST = ValueSettings(steps=3)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, tiny_llama_dir, tiny_gpt2_dir):
    folder = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]
    model, tok, layout = models.load(str(folder))
    facts = RECORDS.to_dict("records")
    K = keys.compute_keys(model, tok, layout, 1, facts, TEMPLATES)
    R = values.compute_values(model, tok, layout, 1, facts, TEMPLATES, FAST, batch_size=8).residual
    return model, tok, layout, covariance_standin(model, tok, layout, 1), K.T, R.T


def _loop(model, tok, layout, edits, groups):
    """The plain way: apply each edit, score its cases, revert."""
    tables = []
    for (A, B), cases in zip(edits, groups):
        delta = A @ B.T
        editing.apply_delta(model, layout, 1, delta)
        tables.append(metrics.score(model, tok, RECORDS[RECORDS.case_id.isin(cases)], layout=layout))
        editing.revert_delta(model, layout, 1, delta)
    return pd.concat(tables).sort_values(["case_id", "prompt_kind", "prompt_index", "target"], ignore_index=True)


@pytest.mark.parametrize("algorithm,batch", [("rome", 1), ("memit", 8), ("emmet", 4)])
def test_batched_independent_edits_equal_the_loop(setup, algorithm, batch):
    model, tok, layout, C, K, R = setup
    w0 = layout.weight(model, 1).clone()
    cfg = editing.EditConfig(algorithm, 1, edit=EditSettings(mom2_update_weight=1e-3, emmet_lambda=0.1))
    groups = [list(RECORDS.case_id[i : i + batch]) for i in range(0, len(RECORDS), batch)]
    solved = editing.independent_batches(editing.prepare(cfg, C), K, R, batch, labels=list(RECORDS.case_id))
    edits = [(e.A, e.B) for e in solved]
    case_edit = {case: e for e, cases in enumerate(groups) for case in cases}
    batched = metrics.score(model, tok, RECORDS, layout=layout, layer=1, case_edit=case_edit,
                            edits=LowRankEdits([a for a, _ in edits], [b for _, b in edits]))
    batched = batched.sort_values(["case_id", "prompt_kind", "prompt_index", "target"], ignore_index=True)
    looped = _loop(model, tok, layout, edits, groups)
    assert torch.equal(layout.weight(model, 1), w0) or torch.allclose(layout.weight(model, 1), w0, atol=1e-6)
    np.testing.assert_allclose(batched.nll, looped.nll, atol=1e-4)
    unedited = metrics.score(model, tok, RECORDS, layout=layout).sort_values(
        ["case_id", "prompt_kind", "prompt_index", "target"], ignore_index=True)
    assert np.abs(unedited.nll - batched.nll).max() > 1e-3  # the edits did something
