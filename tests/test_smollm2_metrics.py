"""The unedited SmolLM2 on real full-format CounterFact records: what must hold for any sane model."""

import numpy as np
import pytest
from conftest import SHARED

from editscale import data
from editscale.evaluation import fluency, metrics

pytestmark = [pytest.mark.smollm2, pytest.mark.slow,
              pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]


def test_unedited_baseline(smollm2):
    model, tokenizer, layout = smollm2
    records = data.load_counterfact(SHARED / "counterfact" / "full", unique_subjects=False)
    assert len(records) == 520
    records = records.iloc[::8].reset_index(drop=True)  # 65 of them: all 520 cost 8x and check no more
    table = metrics.score(model, tokenizer, records, layout=layout, batch_size=128)
    assert len(table) == 2 * len(records) * (1 + 2 + 10)
    summary = metrics.aggregate(metrics.per_case(table)).set_index("metric")["mean"]
    assert np.isfinite(summary).all()
    # Before editing, the true answers are the likelier ones: neighbours keep them, rewrites lack the new ones.
    assert summary["NS"] > summary["ES"]
    entropy = fluency.generation_entropy(model, tokenizer, records, n_cases=10, max_new_tokens=30)
    assert len(entropy) == 10 and np.isfinite(entropy.entropy).all() and (entropy.entropy > 0).all()
