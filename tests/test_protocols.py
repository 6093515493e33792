"""Claim (c) under the three protocols, on per-case tables built so that the protocols must disagree:
a sequential run whose batches score well right after their own edit (immediate, the paper's
protocol) but badly once every edit is in (retained, and its own last batch)."""

import numpy as np
import pandas as pd
import pytest

from editscale.settings import Findings
from editscale.workflow import findings
from editscale.workflow.experiments import protocols
from editscale.workflow.findings import CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, REPRODUCED

N = 256
OPTIONS = Findings(n_boot=400, seed=0, margin=5.0)


def base(seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"case_id": np.arange(N), **{m: np.clip(mu + 15 * rng.standard_normal(N), 0, 100)
                                                     for m, mu in (("ES", 80.0), ("PS", 70.0), ("NS", 60.0))}})


def run_tables(shifts: dict, seed=1):
    """Immediate and retained per-case tables of MEMIT sequential runs at each B in `shifts` and one
    batch of N. shifts[B] = (NS shift right after the case's own batch, NS shift after all N edits);
    the one batch is the base. Retained points every 64 edits."""
    cases, rng = base(), np.random.default_rng(seed)
    immediate, retained = [], []
    for size, (early, late) in {**shifts, N: (0.0, 0.0)}.items():
        batch = cases.case_id // size
        n_edits = np.minimum((batch + 1) * size, N)
        noise = rng.standard_normal(N)
        last = batch == batch.max()
        now = cases.assign(NS=cases.NS + np.where(last, late, early) + noise, batch=batch, n_edits=n_edits)
        immediate.append(now.assign(batch_size=size))
        for k in range(64, N + 1, 64):
            if k % size and k != N:
                continue
            done = cases[cases.case_id < k]
            # Retained: the NS shift grows with the edits in the model, from early (few) to late (all N).
            shift = early + (late - early) * k / N
            retained.append(done.assign(NS=done.NS + shift + rng.standard_normal(len(done)), batch=k // size - 1,
                                        n_edits=k, batch_size=size))
    label = dict(algorithm="memit", layer=3, layers="3", dataset="counterfact", format="easyedit")
    return (pd.concat(immediate, ignore_index=True).assign(**label),
            pd.concat(retained, ignore_index=True).assign(**label))


def rows_of(rows, protocol):
    return [r for r in rows if r["claim"].startswith("c. sequential keeps") and f"; {protocol}" in r["claim"]]


def test_the_protocols_disagree_where_the_tables_make_them():
    # B = 64: +8 NS right after each batch, −6 once all 256 edits are in (its last batch included).
    immediate, retained = run_tables({64: (8.0, -6.0)})
    rows = protocols.sequential_vs_batch(immediate, retained, OPTIONS)
    (paper,) = rows_of(rows, "immediate, the paper's")
    (last,) = rows_of(rows, "last batch")
    (kept,) = rows_of(rows, "retained")
    # Immediate: three batches at +8 and the last at −6 over all 256 cases: (3·8 − 6)/4 = +4.5.
    assert paper["verdict"] == REPRODUCED and paper["value"] == pytest.approx(4.5, abs=0.6) and paper["n_cases"] == N
    assert last["verdict"] == CONTRADICTED and last["value"] == pytest.approx(-6, abs=0.6) and last["n_cases"] == 64
    assert kept["verdict"] == CONTRADICTED and kept["value"] == pytest.approx(-6, abs=0.6) and kept["n_cases"] == N
    # The mean load when scored: batches after 64, 128, 192 and 256 edits, 160 on average (5N/8).
    assert "mean edits in the model when scored: 160 against 256" in paper["detail"]
    assert "mean edits in the model when scored: 256 against 256" in last["detail"]
    # The retained path on the way, each point on the cases edited so far: +4.5 after 64 edits.
    assert "after 64: +4.5" in kept["detail"] or "after 64: +4.4" in kept["detail"] or "after 64: +4.6" in kept["detail"]
    assert all("B = 64 × 4" in r["statistic"] for r in (paper, last, kept))


def test_one_fact_at_a_time_cannot_settle_the_last_batch_protocol():
    # B = 1: the last batch is one case. A large effect on it is still no verdict.
    immediate, retained = run_tables({1: (8.0, -30.0), 64: (0.0, 0.0)})
    rows = protocols.sequential_vs_batch(immediate, retained, OPTIONS)
    one_fact = [r for r in rows_of(rows, "last batch") if "B = 1 ×" in r["statistic"]]
    assert [r["n_cases"] for r in one_fact] == [1] and one_fact[0]["verdict"] == INCONCLUSIVE
    assert f"fewer than {findings.MIN_CASES}" in one_fact[0]["detail"]
    # The paper's protocol is settled over all 256 cases: 255 at +8, one at −30.
    (paper,) = [r for r in rows_of(rows, "immediate, the paper's") if "B = 1 ×" in r["statistic"]]
    assert paper["verdict"] == REPRODUCED and paper["n_cases"] == N


def test_the_best_batch_size_is_stated_under_each_protocol():
    # B = 16 best right after its edits, B = 64 worst at the end: the two readings disagree.
    immediate, retained = run_tables({16: (10.0, -2.0), 64: (-8.0, 6.0)})
    rows = [r for r in protocols.sequential_vs_batch(immediate, retained, OPTIONS)
            if r["claim"].startswith("c. the best")]
    by_protocol = {r["claim"].split("; ")[1].rstrip(")"): r for r in rows}
    assert set(by_protocol) == {"immediate, the paper's", "last batch", "retained"}
    assert by_protocol["immediate, the paper's"]["statistic"].startswith("Score(best B = 16)")
    assert by_protocol["retained"]["statistic"].startswith("Score(best B = 64)")
    assert by_protocol["last batch"]["verdict"] == NOT_MEASURED  # other cases at every B
    for row in (by_protocol["immediate, the paper's"], by_protocol["retained"]):
        assert "ES " in row["detail"] and "NS " in row["detail"] and "P(best)" in row["detail"]


def test_a_grid_of_two_sizes_has_no_intermediate_size():
    immediate, retained = run_tables({64: (0.0, 0.0)})
    rows = [r for r in protocols.sequential_vs_batch(immediate, retained, OPTIONS) if r["claim"].startswith("c. the best")]
    assert rows and all(r["verdict"] == NOT_MEASURED and "two sizes" in r["statistic"] for r in rows)


def test_the_summary_sets_every_point_against_the_one_batch_on_the_same_cases():
    immediate, retained = run_tables({64: (8.0, -6.0)})
    # The one batch is 20 NS points better on the first 64 cases than on the rest: a comparison with
    # its mean over all N would be off by 15 there.
    for table in (immediate, retained):
        table.loc[(table.batch_size == N) & (table.case_id < 64), "NS"] += 20
    groups = ["algorithm", "layer", "layers", "batch_size"]
    summary = protocols.summarise(retained, [*groups, "n_edits"], OPTIONS)
    at64 = summary[(summary.batch_size == 64) & (summary.n_edits == 64) & (summary.metric == "NS")].iloc[0]
    one = retained[(retained.batch_size == N) & (retained.case_id < 64)].NS.mean()
    seq = retained[(retained.batch_size == 64) & (retained.n_edits == 64)].NS.mean()
    assert at64.one_batch == pytest.approx(one) and at64.versus_one_batch == pytest.approx(seq - one)
    assert at64.versus_low < at64.versus_one_batch < at64.versus_high
    assert summary[summary.batch_size == N].versus_one_batch.isna().all()  # the one batch is the reference
    # Immediate: pooled by stretch of 64 edits; the load is when the stretch's cases were scored.
    by_stretch = protocols.summarise(immediate, [*groups, "stretch"], OPTIONS)
    ns = by_stretch[(by_stretch.batch_size == 64) & (by_stretch.metric == "NS")].sort_values("stretch")
    assert list(ns.stretch) == [64, 128, 192, 256] and list(ns.load) == [64, 128, 192, 256]
    assert ns.versus_one_batch.iloc[0] == pytest.approx(8 - 20, abs=0.6)  # against the one batch's first 64 cases
    assert ns.versus_one_batch.iloc[-1] == pytest.approx(-6, abs=0.6)


def test_the_immediate_curve_pools_one_fact_at_a_time_into_stretches():
    immediate, _ = run_tables({1: (8.0, -6.0)})
    pooled = protocols.summarise(immediate, ["algorithm", "layer", "layers", "batch_size", "stretch"], OPTIONS)
    ones = pooled[(pooled.batch_size == 1) & (pooled.metric == "NS")].sort_values("stretch")
    assert list(ones.stretch) == [64, 128, 192, 256] and list(ones.n_cases) == [64] * 4
    assert list(ones.load) == pytest.approx([32.5, 96.5, 160.5, 224.5])  # the mean of 1..64, 65..128, ...
