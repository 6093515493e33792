"""zsRE: both real files read into the neutral record, bad records named, and the metrics pinned to
kmeng01/memit's definitions (eval_utils_zsre.py, summarize.py) and EasyEdit's locality."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED

from editscale import paths
from editscale.data import records, registry, zsre
from editscale.evaluation import metrics

needs_data = pytest.mark.skipif(SHARED is None, reason="needs the offline data folder (shared/data)")
MEND = SHARED / "zsre" / "zsre_mend_eval_portability_gpt4.json" if SHARED else None
KNOWEDIT = SHARED / "zsre" / "knowedit_ZsRE-test-all.json" if SHARED else None


@needs_data
def test_mend_file_maps_field_for_field_as_memit_reads_it():
    raw = json.loads(MEND.read_text())
    frame = zsre.load(MEND, unique_subjects=False)
    assert len(frame) == len(raw) == 1037 and list(frame.columns) == records.COLUMNS
    assert frame.case_id.tolist() == list(range(1037))  # memit: case_id = position
    for row, rec in zip(frame.itertuples(), raw):
        assert row.prompt == rec["src"].replace(rec["subject"], "{}", 1) and "{}" in row.prompt
        assert row.target_new == rec["answers"][0] and pd.isna(row.target_true)  # memit edits towards answers[0]
        assert row.paraphrase_prompts == [rec["rephrase"]]
        assert row.neighborhood_prompts == [rec["loc"] + "?"] and row.neighborhood_answers == [rec["loc_ans"]]
        assert row.portability_answers == [rec["portability"]["New Answer"]]
    assert (frame.dataset == "zsre").all() and (frame.format == "mend").all()
    assert len(zsre.load(MEND)) == 743  # one question per subject


@needs_data
def test_alt_target_is_easyedits_and_replaces_the_true_answer():
    raw = json.loads(MEND.read_text())
    frame = zsre.load(MEND, unique_subjects=False, target="alt")
    assert frame.target_new.tolist() == [r["alt"].strip() for r in raw]  # a few have a leading space
    assert frame.target_true.tolist() == [r["answers"][0] for r in raw]
    assert frame.paraphrase_answers.map(lambda a: a[0]).tolist() == [r["alt"].strip() for r in raw]


@needs_data
def test_knowedit_file_reads_its_locality_and_portability_groups():
    raw = json.loads(KNOWEDIT.read_text())
    frame = zsre.load(KNOWEDIT, unique_subjects=False, target="alt")
    assert len(frame) == 1304 and (frame.format == "knowedit").all()
    first = frame.iloc[0]
    assert first.target_new == raw[0]["target_new"] and first.target_true == raw[0]["ground_truth"][0]
    spec = raw[0]["locality"]["Relation_Specificity"]
    assert first.neighborhood_prompts == [s["prompt"] for s in spec]
    assert first.neighborhood_answers == [s["ground_truth"][0] for s in spec]
    assert (frame.target_new == frame.target_new.str.strip()).all()  # ten have a leading space in the file
    assert len(zsre.load(KNOWEDIT)) == 1071


def _write(tmp_path, recs):
    path = tmp_path / "z.json"
    path.write_text(json.dumps(recs))
    return path


MEND_RECORD = {"subject": "Angola", "src": "Where is Angola?", "rephrase": "Which continent holds Angola?",
               "alt": "Europe", "answers": ["Africa"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"}


@pytest.mark.parametrize("change,message", [
    ({"src": "Where is it?"}, "record 1 (mend format): field 'src' does not contain the subject 'Angola'"),
    ({"answers": []}, "record 1 (mend format): field 'answers' must be a non-empty string"),
    ({"loc_ans": "two\nlines"}, "field 'loc_ans' holds a line break"),
    ({"rephrase": None}, "field 'rephrase' must be a non-empty string"),
    ({"portability": {"New Question": "Where is Angola's capital?"}},
     "field 'portability.New Answer' must be a non-empty string"),
    ({"portability": "Luanda"}, "field 'portability' must be an object (str given)"),
])
def test_bad_records_are_named_with_their_field(tmp_path, change, message):
    broken = {**MEND_RECORD, **change}
    with pytest.raises(zsre.ZsreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        zsre.load(_write(tmp_path, [MEND_RECORD, broken]))
    missing = {k: v for k, v in MEND_RECORD.items() if k != "loc"}
    with pytest.raises(zsre.ZsreError, match="field 'loc' is missing"):
        zsre.load(_write(tmp_path, [missing]))


def test_knowedit_groups_that_are_no_list_are_named(tmp_path):
    record = {"subject": "Angola", "prompt": "Where is Angola?", "rephrase_prompt": "Which continent holds Angola?",
              "target_new": "Europe", "ground_truth": ["Africa"],
              "locality": {"Relation_Specificity": [{"prompt": "The capital of Angola is", "ground_truth": ["Luanda"]}]}}
    assert len(zsre.load(_write(tmp_path, [record]))) == 1
    for portability in ({"Reasoning": "Luanda"}, {"Reasoning": 3}):
        with pytest.raises(zsre.ZsreError, match=r"field 'portability.Reasoning' must be a list"):
            zsre.load(_write(tmp_path, [{**record, "portability": portability}]))


def _memit_token_accuracy(model, tok, prompt: str, target: str) -> list[bool]:
    """kmeng01/memit test_batch_prediction_acc, literally: each prefix prompt + decode(t[:i]) is
    re-tokenised, and its last position's argmax compared with the first token of decode(t[i])."""
    target_tok = tok(" " + target)["input_ids"]
    correct = []
    for i in range(len(target_tok)):
        ids = tok(prompt + tok.decode(target_tok[:i]))["input_ids"]
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        correct.append(int(logits.argmax()) == tok(tok.decode(target_tok[i]))["input_ids"][0])
    return correct


TINY = ("gpt2",)  # no BOS: memit's `tok(target)[:, 0]` is the target's first token


@pytest.fixture
def knowing(tiny):
    """A bigram model that has learnt some of the records' texts (each bigram of the first answer
    of every kind), so its token accuracies are neither all 0 nor all 100."""
    from test_metrics import LAYOUT, Bigram

    _, tok, _ = tiny
    table = torch.randn(len(tok), len(tok), generator=torch.Generator().manual_seed(0))
    for rec in ZSRE_RECORDS.itertuples():
        for prompt, answer in ((rec.prompt.replace("{}", rec.subject), rec.target_new),
                               (rec.neighborhood_prompts[0], rec.neighborhood_answers[0])):
            ids = tok(prompt + " " + answer)["input_ids"]
            for a, b in list(zip(ids, ids[1:]))[::2]:  # every other bigram: some tokens right, some wrong
                table[a, b] += 20.0
    return Bigram(table), tok, LAYOUT


ZSRE_RECORDS = records.typed(pd.DataFrame([
    dict(case_id=0, dataset="zsre", format="mend", subject="Angola", prompt="Where is {}?", target_new="Africa",
         target_true=None, relation_id=None, paraphrase_prompts=["Which continent holds Angola?"],
         paraphrase_answers=["Africa"], neighborhood_prompts=["nq question: who wrote the play?"],
         neighborhood_answers=["William Shakespeare"], portability_prompts=[], portability_answers=[],
         generation_prompts=[]),
    dict(case_id=1, dataset="zsre", format="mend", subject="Toyota", prompt="Who owns {}?",
         target_new="a company in Japan", target_true=None, relation_id=None,
         paraphrase_prompts=["Toyota is owned by whom?"], paraphrase_answers=["a company in Japan"],
         neighborhood_prompts=["nq question: where is the Eiffel Tower?", "The capital of France is"],
         neighborhood_answers=["in Paris", "Paris"], portability_prompts=["Where is Toyota's owner?"],
         portability_answers=["Japan"], generation_prompts=[]),
]))


def test_accuracy_metrics_equal_memits_token_loop(knowing):
    model, tok, layout = knowing
    scored = metrics.score(model, tok, ZSRE_RECORDS, layout=layout, batch_size=3)
    cases = metrics.per_case(scored, dataset="zsre").set_index("case_id")
    for rec in ZSRE_RECORDS.itertuples():
        for name, prompts, answers in (
                ("Efficacy", [rec.prompt.replace("{}", rec.subject)], [rec.target_new]),
                ("Paraphrase", rec.paraphrase_prompts, rec.paraphrase_answers),
                ("Specificity", rec.neighborhood_prompts, rec.neighborhood_answers),
                ("Portability", rec.portability_prompts, rec.portability_answers)):
            flat = [c for p, a in zip(prompts, answers) for c in _memit_token_accuracy(model, tok, p, a)]
            # summarize.py: np.mean over the kind's flattened token list, then over cases.
            expected = 100 * np.mean(flat) if flat else np.nan
            np.testing.assert_allclose(cases.loc[rec.case_id, name], expected, err_msg=f"case {rec.case_id} {name}")
    values = cases[["Efficacy", "Paraphrase", "Specificity"]].to_numpy().ravel()
    assert ((values > 0) & (values < 100)).any() and (values > 0).sum() >= 2  # the comparison has teeth
    assert cases.loc[1, "n_neighborhood"] == 2 and cases.loc[0, "n_portability"] == 0


def test_locality_is_agreement_with_the_unedited_predictions(tiny):
    model, tok, layout = tiny
    unedited = metrics.score(model, tok, ZSRE_RECORDS, layout=layout)
    assert (metrics.per_case(unedited, dataset="zsre").Locality == 100).all()  # its own reference
    edited = unedited.copy()
    row = edited.index[(edited.case_id == 1) & (edited.prompt_kind == "neighborhood") & (edited.prompt_index == 0)][0]
    tokens = list(edited.at[row, "argmax"])
    tokens[0] = tokens[0] + 1  # one predicted token of one neighbour changes
    edited.at[row, "argmax"] = tokens
    cases = metrics.per_case(edited, dataset="zsre", reference=unedited).set_index("case_id")
    n = sum(len(a) for a in unedited[(unedited.case_id == 1) & (unedited.prompt_kind == "neighborhood")].argmax)
    assert cases.loc[0, "Locality"] == 100 and cases.loc[1, "Locality"] == pytest.approx(100 * (n - 1) / n)


def test_aggregate_names_zsres_metrics_and_averages_portability_where_defined(tiny):
    model, tok, layout = tiny
    cases = metrics.per_case(metrics.score(model, tok, ZSRE_RECORDS, layout=layout), dataset="zsre")
    cases = cases.merge(ZSRE_RECORDS[["case_id", "dataset", "format"]], on="case_id")
    agg = metrics.aggregate(cases).set_index("metric")
    assert set(agg.index) == {*zsre.METRICS, "Score"} and (agg.dataset == "zsre").all()
    assert agg.loc["Portability", "mean"] == pytest.approx(cases.Portability.dropna().mean())
    means = [cases[m].mean() for m in zsre.HEADLINE]  # Score: the harmonic mean, written out
    assert agg.loc["Score", "mean"] == pytest.approx(3 / sum(1 / m for m in means) if min(means) > 0 else 0.0)


def test_every_registered_dataset_is_in_the_schema_and_back():
    import yaml

    schema = yaml.safe_load((paths.REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["properties"]["data"]["properties"]["dataset"]["enum"]) == set(registry.DATASETS)
    for name, entry in registry.DATASETS.items():
        assert set(entry.headline) <= set(entry.metrics) and entry.kinds[0] == "rewrite", name
        assert set(entry.labels) == set(entry.metrics), name


@needs_data
def test_the_same_config_on_other_data_writes_to_another_path(tmp_path, monkeypatch):
    """`auto` on two machines whose offline files differ: two selection names, never one path."""
    from editscale.workflow.stages import selection_name

    settings = {"dataset": "counterfact", "source": "auto", "target": "auto", "n": 4, "seed": 0,
                "unique_subjects": True}
    here = selection_name(settings)
    other = tmp_path / "data"
    (other / "counterfact" / "full").mkdir(parents=True)
    full = json.loads((SHARED / "counterfact" / "full" / "counterfact_500.json").read_text())
    full[0]["requested_rewrite"]["target_new"]["str"] = "Mars"
    (other / "counterfact" / "full" / "counterfact_500.json").write_text(json.dumps(full))
    monkeypatch.setenv("EDITSCALE_DATA", str(other))
    there = selection_name(settings)
    assert here != there and here.split("-")[:2] == there.split("-")[:2] == ["counterfact", "full"]
    monkeypatch.setenv("EDITSCALE_DATA", str(SHARED))
    assert selection_name(settings) == here


def test_a_prompt_beyond_the_context_is_refused_naming_its_case(tiny):
    from editscale.workflow.stages import check_context

    _, tok, _ = tiny
    long = ZSRE_RECORDS.copy()
    long.at[1, "paraphrase_prompts"] = ["Toyota " + "word " * 20_000]
    check_context(ZSRE_RECORDS, tok, 256, prefix_tokens=10)
    with pytest.raises(records.RecordError, match="case_id 1: its paraphrase prompt"):
        check_context(long, tok, 256, prefix_tokens=10)
