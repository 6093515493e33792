"""The findings statistics on per-case tables built so that each verdict must come out each way."""

import numpy as np
import pandas as pd
import pytest

from editscale.settings import Findings
from editscale.workflow import experiments, findings
from editscale.workflow.experiments import batch as batch_experiment
from editscale.workflow.experiments import protocols
from editscale.workflow.experiments import sequential as sequential_experiment
from editscale.workflow.experiments import sweep as sweep_experiment
from editscale.workflow.findings import CONTRADICTED, INCONCLUSIVE, REPRODUCED

N = 200
OPTIONS = Findings(n_boot=500, seed=0, margin=5.0)


def cases(n=N, seed=0, es=90.0, ps=80.0, ns=70.0, spread=40.0, **labels):
    """Per-case rows with ES, PS, NS around the given means (clipped to [0, 100])."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"case_id": np.arange(n)})
    for metric, mean in (("ES", es), ("PS", ps), ("NS", ns)):
        frame[metric] = np.clip(mean + spread * rng.standard_normal(n), 0, 100)
    for key, value in labels.items():
        frame[key] = value
    return frame


def shared_noise(n=N, seed=1, spread=20.0):
    """Case effects common to every condition: what pairing cancels."""
    return spread * np.random.default_rng(seed).standard_normal(n)


def with_effect(base: pd.DataFrame, shift: float, metric: str, noise: float, seed: int, **labels):
    frame = base.copy()
    frame[metric] = frame[metric] + shift + noise * np.random.default_rng(seed).standard_normal(len(frame))
    for key, value in labels.items():
        frame[key] = value
    return frame


def sweep(shifts: dict, algorithms=("rome", "memit"), algo_shift=0.0, noise=2.0):
    base = cases(spread=15)
    parts = []
    for layer, shift in shifts.items():
        for i, algorithm in enumerate(algorithms):
            frame = base.copy()
            for j, metric in enumerate(("ES", "PS", "NS")):
                frame[metric] = frame[metric] + shift + (algo_shift if algorithm == "rome" else 0) \
                    + noise * np.random.default_rng(100 * layer + 10 * i + j).standard_normal(N)
            parts.append(frame.assign(layer=layer, algorithm=algorithm))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("shifts,verdict", [
    ({1: 10, 2: 5, 20: 0, 28: -5}, REPRODUCED),  # an early layer clearly best
    ({1: -10, 2: -8, 20: 6, 28: 0}, CONTRADICTED),  # a late layer clearly best
    ({1: 0.05, 2: 0, 20: 0, 28: 0}, INCONCLUSIVE),  # no real difference
])
def test_best_layer_verdicts(shifts, verdict):
    rows = sweep_experiment.layer_claims(sweep(shifts), 30, OPTIONS)
    assert rows[0]["verdict"] == verdict, rows[0]
    assert "layer 1:" in rows[0]["detail"] and rows[0]["n_cases"] == N


@pytest.mark.parametrize("algo_shift,noise,verdict", [(0.0, 1.0, REPRODUCED), (15.0, 1.0, CONTRADICTED),
                                                      (5.0, 25.0, INCONCLUSIVE)])
def test_rome_memit_equivalence_verdicts(algo_shift, noise, verdict):
    rows = sweep_experiment.layer_claims(sweep({1: 0, 20: 0}, algo_shift=algo_shift, noise=noise), 30, OPTIONS)
    assert rows[1]["claim"] == "a. ROME ≈ MEMIT across layers" and rows[1]["verdict"] == verdict, rows[1]


def batch(ns_by_size: dict, noise=2.0, algorithms=("memit", "emmet"), emmet_shift=0.0):
    base = cases(spread=15)
    parts = []
    for algorithm in algorithms:
        for size, shift in ns_by_size.items():
            frame = with_effect(base, shift, "NS", noise, seed=size, batch_size=size, algorithm=algorithm)
            if algorithm == "emmet":
                frame[["ES", "PS", "NS"]] += emmet_shift
            parts.append(frame)
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("ns_by_size,noise,verdict", [
    ({16: 0, 64: -3, 256: -6, 1024: -9}, 2.0, REPRODUCED),
    ({16: 0, 64: 3, 256: 6, 1024: 9}, 2.0, CONTRADICTED),
    ({16: 0, 64: 0.1, 256: -0.1, 1024: 0}, 30.0, INCONCLUSIVE),
])
def test_ns_falls_with_batch_size_verdicts(ns_by_size, noise, verdict):
    rows = batch_experiment.batch_size_effect(batch(ns_by_size, noise), OPTIONS)
    assert {r["verdict"] for r in rows} == {verdict}, rows
    assert len(rows) == 4  # slope and difference, for each algorithm


@pytest.mark.parametrize("emmet_shift,verdict", [(0.0, REPRODUCED), (-20.0, CONTRADICTED)])
def test_memit_emmet_equivalence_verdicts(emmet_shift, verdict):
    rows = batch_experiment.memit_vs_emmet(batch({16: 0, 64: 0}, noise=1.0, emmet_shift=emmet_shift), OPTIONS)
    assert rows[0]["verdict"] == verdict, rows


def test_each_emmet_variant_gets_its_own_d_row_and_leaves_emmets_unchanged():
    """A λ sweep (emmet@emmet_lambda=…) beside EMMET: one (d) row per variant, at the sizes it ran, and
    EMMET's own row exactly as without the variants (its pairing and resamples do not see them)."""
    plain = batch({16: 0, 64: 0}, noise=1.0, emmet_shift=-20.0)
    far = plain[plain.algorithm == "memit"].assign(algorithm="emmet@emmet_lambda=1")  # as MEMIT: ≈ holds
    near = plain[(plain.algorithm == "emmet") & (plain.batch_size == 64)].assign(algorithm="emmet@emmet_lambda=0.01")
    rows = batch_experiment.memit_vs_emmet(pd.concat([plain, far, near], ignore_index=True), OPTIONS)
    assert rows[0] == batch_experiment.memit_vs_emmet(plain, OPTIONS)[0]
    assert [r["claim"] for r in rows] == ["d. MEMIT ≈ EMMET", "d. MEMIT ≈ EMMET (emmet_lambda=0.01)",
                                          "d. MEMIT ≈ EMMET (emmet_lambda=1)"]
    assert [r["verdict"] for r in rows] == [CONTRADICTED, CONTRADICTED, REPRODUCED]
    assert rows[1]["statistic"].endswith("at B = 64") and rows[2]["value"] == 0.0


def retained(es_ps: dict, ns: dict | None = None, n=64, algorithms=("memit",), noise=2.0):
    """Final retained rows per batch size with ES and PS shifted by es_ps[B] and NS by ns[B]."""
    base = cases(n=N, spread=15)
    parts = []
    for algorithm in algorithms:
        for size, shift in es_ps.items():
            frame = base.copy()
            for j, metric in enumerate(("ES", "PS", "NS")):
                change = (ns or es_ps)[size] if metric == "NS" else shift
                frame[metric] = frame[metric] + change + noise * np.random.default_rng(size + j).standard_normal(N)
            parts.append(frame.assign(algorithm=algorithm, batch_size=size, n_edits=n))
            parts.append(frame.assign(algorithm=algorithm, batch_size=size, n_edits=n // 2, ES=0.0))  # earlier checkpoint
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("es_ps,ns,noise,verdicts", [
    # NS(B = 4) and NS(B = 16) − NS(one batch of 64), then the best B by Score (16: intermediate).
    ({4: 0, 16: 8, 64: -8}, {4: 6, 16: 8, 64: -8}, 2.0, [REPRODUCED, REPRODUCED, REPRODUCED]),
    ({4: 10, 16: 0, 64: -10}, {4: -5, 16: -5, 64: 0}, 2.0, [CONTRADICTED, CONTRADICTED, CONTRADICTED]),
    ({4: 0, 16: 0.1, 64: 0}, {4: 0, 16: 0, 64: 0}, 40.0, [INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE]),
    # One sequential B helps, the other does not: each B is judged on its own.
    ({4: 0, 16: 0, 64: 0}, {4: 6, 16: -6, 64: 0}, 2.0, [REPRODUCED, CONTRADICTED, CONTRADICTED]),  # B = 4 best: the smallest
])
def test_sequential_verdicts_for_every_batch_size(es_ps, ns, noise, verdicts):
    table = retained(es_ps, ns, noise=noise)
    rows = protocols.sequential_vs_batch(table.iloc[:0], table, OPTIONS)  # retained alone
    assert [r["verdict"] for r in rows] == verdicts, rows
    assert [r["statistic"] for r in rows[:2]] == ["NS(B = 4 × 16) − NS(one batch of 64), retained",
                                                  "NS(B = 16 × 4) − NS(one batch of 64), retained"]
    # The detail carries the paired ES and Score gaps: ES moves by es_ps[B] − es_ps[64] (noise aside).
    for row, size in zip(rows[:2], (4, 16)):
        es = float(row["detail"].split("ES ")[1].split(" ")[0])
        assert es == pytest.approx(es_ps[size] - es_ps[64], abs=noise + 1), row["detail"]
        assert "Score " in row["detail"]
    assert "P(best)" in rows[2]["detail"] and "best B = " in rows[2]["detail"]


def test_p_best_is_a_distribution_that_finds_a_clear_winner_and_shares_ties():
    rng = np.random.default_rng(0)
    clear = findings.p_best({"a": rng.normal(10, 1, 1000), "b": rng.normal(0, 1, 1000), "c": rng.normal(0, 1, 1000)})
    assert clear["a"] > 0.99 and abs(sum(clear.values()) - 1) < 1e-12
    close = findings.p_best({"a": rng.normal(0, 1, 4000), "b": rng.normal(0, 1, 4000)})
    assert 0.45 < close["a"] < 0.55
    tied = findings.p_best({"a": np.ones(10), "b": np.ones(10)})
    assert tied == {"a": 0.5, "b": 0.5}


def test_layer_scores_give_each_layers_ci_and_chance_of_being_best():
    table = sweep_experiment.layer_scores(sweep({1: 10, 2: 9.95, 20: 0, 28: -5}), OPTIONS)
    assert list(table.layer) == [1, 2, 20, 28] and abs(table.p_best.sum() - 1) < 1e-9
    assert (table.ci_low < table.Score).all() and (table.Score < table.ci_high).all()
    assert table.p_best[table.layer >= 20].sum() < 0.01  # the late layers are never best
    assert 0 < table.p_best[table.layer == 2].item() < table.p_best[table.layer == 1].item()
    rows = sweep_experiment.layer_claims(sweep({1: 10, 2: 9.95, 20: 0, 28: -5}), 30, OPTIONS)
    assert "P(the best is early" in rows[0]["detail"] and "P(best)" in rows[0]["detail"]


def test_retention_names_the_algorithm_that_keeps_most_or_says_it_cannot_tell():
    clear = retained({1: 0}, algorithms=("memit", "alphaedit"))
    clear.loc[clear.algorithm == "alphaedit", "ES"] += 20
    (row,) = sequential_experiment.retention(clear, OPTIONS)
    assert row["verdict"] == "alphaedit retains most" and row["value"] > 0
    (row,) = sequential_experiment.retention(retained({1: 0}, algorithms=("memit", "emmet"), noise=30.0), OPTIONS)
    assert row["verdict"] == INCONCLUSIVE


def claims_table(seed: int) -> pd.DataFrame:
    """Every registered experiment's claims on hand-made runs, at the chosen layer and no window."""
    from editscale.workflow import experiments

    runs = {"sweep": sweep({1: 5, 20: 0}), "batch": batch({16: 0, 64: -4}), "retained": retained({4: 0, 64: -5})}
    runs["immediate"] = runs["retained"].iloc[:0]
    return findings.table(findings.Runs(runs, runs, 30, "auto", None, Findings(n_boot=300, seed=seed)),
                          experiments.claims())


def test_the_table_is_seeded_and_renders():
    tables = [claims_table(s) for s in (3, 3, 4)]
    letters = [claim[0] for claim in tables[0].claim]
    assert letters == sorted(letters) and {"a", "b", "c"} <= set(letters)  # each claim that applies, by letter
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert not np.allclose(tables[0].ci_low, tables[2].ci_low)
    text = findings.markdown(tables[0])
    assert text.count("\n| ") == len(tables[0]) and f"**reproduced at n = {N}**" in text  # a line per claim
    with_layers = findings.markdown(tables[0], experiments.appendix({"sweep": sweep({1: 5, 20: 0})}, OPTIONS))
    assert "| 1 |" in with_layers and "P(best)" in with_layers  # the sweep's appendix, from its entry
    assert with_layers.startswith(text.rstrip("\n"))


def test_the_largest_gap_is_found_where_the_two_differ_most_and_signed():
    """Three batch sizes; EMMET trails MEMIT by about 0, 10 and 3 Score points of NS-driven gap: the
    statistic lands on the middle size, signed MEMIT − EMMET, over the cases both ran."""
    table = batch({16: 0, 64: 0, 256: 0}, noise=0.0)
    emmet = table.algorithm == "emmet"
    table.loc[emmet & (table.batch_size == 64), "NS"] -= 30
    table.loc[emmet & (table.batch_size == 256), "NS"] -= 8
    at, gap, replicates, n = findings.largest_gap(table, "batch_size", "memit", "emmet", OPTIONS)
    assert at == 64 and gap > 5 and n == N and len(replicates) == OPTIONS.n_boot
    back = findings.largest_gap(table, "batch_size", "emmet", "memit", OPTIONS)
    assert back[0] == 64 and back[1] == pytest.approx(-gap)
    assert findings.largest_gap(table, "batch_size", "memit", "rome", OPTIONS) is None  # nothing in common


def test_a_case_without_a_metric_leaves_the_findings_score_undefined_as_the_tables_do():
    """One Score: a NaN metric makes the Paired Score NaN, as metrics.harmonic_mean says (not 0)."""
    table = batch({16: 0, 64: 0}, noise=0.0)
    table.loc[table.index[(table.algorithm == "memit") & (table.batch_size == 16)][0], "NS"] = np.nan
    pair = findings.Paired(table[table.algorithm == "memit"], "batch_size", OPTIONS)
    assert np.isnan(pair.mean(16, "Score")[0]) and np.isfinite(pair.mean(64, "Score")[0])


def test_finding_h_reads_the_teacher_forced_minus_live_gap_per_b_paired_on_the_same_cases():
    """Live 20 ES points below teacher forcing at B = 16 and 40 at B = 256, NS alike: the gap at the
    largest B is about 40 with its CI above 0, and it grows with B (batch editing's expected sign)."""
    from editscale.workflow.experiments import protocol_gap

    tf = batch({16: 0, 256: 0}, algorithms=("memit",)).assign(protocol="teacher_forced")
    live = tf.assign(protocol="live")
    for size, drop in ((16, 20.0), (256, 40.0)):
        at = live.batch_size == size
        live.loc[at, "ES"] -= drop
        live.loc[at, "NS"] -= drop / 2
    both = pd.concat([tf, live], ignore_index=True)
    rows = pd.DataFrame(protocol_gap.claim_h(findings.Runs({"batch": both, "retained": both.iloc[:0]}, {}, 30, "3",
                                                             None, OPTIONS)))
    gap = rows[rows.claim.str.startswith("h. teacher-forced − live ES")].iloc[0]
    assert abs(gap.value - 40) < 1e-9 and gap.ci_low > 0 and gap.verdict == "live below teacher-forced"
    grows = rows[rows.claim.str.startswith("h. the ES gap changes with B")].iloc[0]
    assert abs(grows.value - 20) < 1e-9 and grows.verdict == REPRODUCED and grows.n_cases == N
    spec = rows[rows.claim.str.startswith("h. teacher-forced − live NS")].iloc[0]
    assert abs(spec.value - 20) < 1e-9
    assert protocol_gap.claim_h(findings.Runs({"batch": tf, "retained": tf.iloc[:0]}, {}, 30, "3", None, OPTIONS)) == []


def test_finding_i_reads_each_editor_against_its_one_batch_and_the_editors_against_each_other():
    """After 256 edits: MEMIT in batches of 64 loses 20 NS points to its one batch, MEMIT_seq none (as good,
    within ±5), AlphaEdit 10 behind MEMIT_seq; so MEMIT_seq keeps most at B = 64. MEMIT with NAS 10 NS points
    above MEMIT at the one batch of 256."""
    from editscale.workflow.experiments import editors

    base, parts = cases(spread=15), []
    for algorithm, loss in (("memit", 20.0), ("memit_seq", 0.0), ("alphaedit", 10.0)):
        one = with_effect(base, 0.0, "NS", 1.0, seed=1, algorithm=algorithm, batch_size=256, n_edits=256)
        seq = with_effect(base, -loss, "NS", 1.0, seed=2, algorithm=algorithm, batch_size=64, n_edits=256)
        parts += [one, seq]
    retained = pd.concat(parts, ignore_index=True)
    plain = with_effect(base, 0.0, "NS", 1.0, seed=3, algorithm="memit", batch_size=256)
    anchored = with_effect(base, 10.0, "NS", 1.0, seed=4, algorithm="memit+nas", batch_size=256)
    runs = findings.Runs({"batch": pd.concat([plain, anchored], ignore_index=True), "retained": retained,
                          "immediate": retained.iloc[:0]}, {}, 30, "3", None, OPTIONS)
    rows = pd.DataFrame(editors.claim_i(runs)).set_index("claim")
    as_good = "i. sequential editing is as good as one batch ({}; retained)"
    assert rows.loc[as_good.format("memit_seq")].verdict == REPRODUCED
    assert rows.loc[as_good.format("memit")].verdict == CONTRADICTED and rows.loc[as_good.format("memit")].ci_high < -5
    most = rows.loc["i. the editor that keeps most after 256 sequential edits (B = 64)"]
    assert most.verdict == "memit_seq keeps most" and "Score(memit_seq) − Score(alphaedit)" in most.statistic
    assert most.ci_low > 0 and most.n_cases == N
    nas = rows.loc["i. NAS changes one batch of 256 (memit)"]
    assert nas.value > 0 and nas.ci_low > 0 and nas.verdict == REPRODUCED and nas.statistic.startswith("Score(memit+nas)")
