"""The downstream check pinned to the reference (scalable-model-editing/unified-model-editing
glue_eval @ 23d72b5): its prompts as it renders them, its parsing rule, scikit-learn's weighted F1
and MCC, and the forced choice against a plain forward pass."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED

from editscale import models
from editscale.evaluation import downstream
from editscale.evaluation.downstream import TASKS, DownstreamError
from editscale.settings import Findings

needs_data = pytest.mark.skipif(SHARED is None, reason="needs the offline data folder (shared/data/downstream)")


def items(task: str) -> list:
    return downstream.load(TASKS[task])


# The first test item (index 10) of each set, as the reference's _create_prompt renders it at 0 shots.
ZERO_SHOT = {
    "sst2": "Review :what better message than ` love thyself ' could young women of any size receive ? \nSentiment :",
    "mrpc": ("Are the sentences paraphrases of each other.\nSentence 1: \" The idea that Tony Abbott is in some way a "
             "one-dimensional political head-kicker couldn 't be more wrong , \" Mr Howard said .\nSentence 2: \" The "
             "idea that Tony Abbott is in some way a one-dimensional political head kicker couldn 't be more wrong . "
             "\"\nAnswer:"),
    "cola": "Is this sentence linguistically acceptable?\nSentence: That is the reason why he resigned.\nAnswer: ",
    "rte": ("The latest attacks targeted the U-S embassy and a top prosecutor's office in the Uzbek capital.\nquestion: "
            "Yesterday's terrorist bombings killed two people at the entrance to the Israeli Embassy in Uzbekistan's "
            "capital. True or False?\nanswer:"),
    "nli": ("Wal-Mart has received a lot of negative publicity recently, including allegations that it used illegal "
            "workers and made employees work without pay during lunch breaks, as well as complaints that it generally "
            "underpays employees. entails the Wal-Mart complains about negative publicity. True or False? Answer:"),
    "mmlu": ("Question: According to the levels of processing model of memory, words and other information may be "
             "encoded at different levels, with _______ processing being the deepest level.\n(A) orthographic\n"
             "(B) phonemic\n(C) semantic\n(D) perceptual\nAnswer:"),
}
# The first pool item as a few-shot block (the 1-shot prompt is this, then the 0-shot one).
FIRST_SHOT = {
    "cola": "Is this sentence linguistically acceptable?\nSentence: The evidence assembled by the prosecution "
            "convinced the jury.\nAnswer: Yes\n",
    "rte": "The town is also home to the Dalai Lama and to more than 10,000 Tibetans living in exile.\nquestion: The "
           "Dalai Lama has been living in exile since 10,000. True or False?\nanswer: True\n",
    "nli": "Turkey is unlikely to become involved in, or allow U.S. forces to use Turkish territory in a Middle East war "
           "that does not threaten her territory directly. entails the U.S. to use Turkish military bases. True or "
           "False? Answer: False\n",
    "mmlu": "Question: Which expression is equivalent to 4 x 9?\n(A) (4x 4) + (4x5)\n(B) (4+4) x (4+5)\n"
            "(C) (4+4)+(4+5)\n(D) (4x 4) x (4x5)\nAnswer: A\n",
}


@needs_data
@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_are_the_references_literally(task):
    data = items(task)
    (prompt, gold), *_ = downstream.prompts(TASKS[task], data, shots=0, n_tests=None)
    assert prompt == ZERO_SHOT[task]
    assert gold == {"sst2": 1, "mrpc": 1, "cola": 1, "rte": 1, "nli": 0, "mmlu": 2}[task]
    if task in FIRST_SHOT:
        (prompt, _), *_ = downstream.prompts(TASKS[task], data, shots=1, n_tests=1)
        assert prompt == FIRST_SHOT[task] + ZERO_SHOT[task]
    assert len(downstream.prompts(TASKS[task], data, shots=4, n_tests=None)) == len(data) - 10


@needs_data
def test_a_context_budget_keeps_a_prefix_of_the_shots_that_fits():
    task, data = TASKS["sst2"], items("sst2")
    count = len  # characters stand in for tokens
    question = task.question(data[10])
    blocks = [task.shot(item) for item in data[:3]]
    budget = len(question) + len(blocks[0]) + len(blocks[1]) + len(blocks[2]) - 1  # the third does not fit
    (prompt, _), = downstream.prompts(task, data, shots=3, n_tests=1, budget=budget, count=count)
    assert prompt == blocks[0] + blocks[1] + question


@pytest.mark.parametrize("task,continuation,answer", [
    ("sst2", " positive\n", 1), ("sst2", " Negative", 0), ("sst2", " neutral", -1),
    ("sst2", " negative or positive", 1),  # positive is looked for first
    ("mrpc", " Yes\nAre", 1), ("mrpc", " I don't know", 0), ("mrpc", " The sentences are not", 0),  # 'no' in a word
    ("mrpc", " maybe", -1),
    ("cola", "Yes", 1), ("cola", "Maybe", -1),
    ("rte", " True or False", 0), ("rte", " true", 1), ("rte", " unclear", -1),  # RTE: false first
    ("nli", " True or False", 1), ("nli", " False", 0),  # NLI: true first
    ("mmlu", " A\nQuestion", 0), ("mmlu", " C\n", 2), ("mmlu", " B", -1), ("mmlu", " (A) orthographic\n", 2),
    ("mmlu", " D\nA\n", 0),
])
def test_the_parsing_rule_is_the_references(task, continuation, answer):
    prompt = {"sst2": "Review :x \nSentiment :", "mrpc": "...\nAnswer:", "cola": "...\nAnswer: ",
              "rte": "x\nquestion: y True or False?\nanswer:", "nli": "x entails the y True or False? Answer:",
              "mmlu": "Question: q\n(A) a\n(B) b\n(C) c\n(D) d\nAnswer:"}[task]
    assert TASKS[task].parse(prompt, continuation) == answer


def test_weighted_f1_and_mcc_are_scikit_learns():
    # scikit-learn's documentation examples (f1_score, matthews_corrcoef), and the reference's
    # case of an unparseable answer (−1) kept as a predicted class, worked by hand.
    assert downstream.weighted_f1([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]) == pytest.approx(0.26666666666666666)
    assert downstream.mcc([1, 1, 1, -1], [1, -1, 1, 1]) == pytest.approx(-0.3333333333333333)
    assert downstream.weighted_f1([1, 0, 1, 0], [1, -1, 0, 0]) == pytest.approx(7 / 12)
    assert downstream.mcc([1, 0, 1, 0], [1, -1, 0, 0]) == pytest.approx(2 / np.sqrt(80))
    assert downstream.accuracy([1, 0, 1, 0], [1, -1, 0, 0]) == 0.5  # unparseable is wrong
    assert downstream.mcc([1, 0, 1, 0], [0, 0, 0, 0]) == 0.0  # a constant answer: no correlation


def test_the_summary_marks_tasks_not_above_chance_as_uninformative():
    n = 200
    labels = np.arange(n) % 2
    table = pd.DataFrame({"task": "sst2", "item": range(n), "label": labels, "prediction": labels})
    constant = table.assign(task="mrpc", prediction=0)
    summary = downstream.summarise(pd.concat([table, constant]), Findings(n_boot=200)).set_index(["task", "metric"])
    assert summary.loc[("sst2", "f1"), "informative"] and summary.loc[("sst2", "accuracy"), "value"] == 1.0
    assert not summary.loc[("mrpc", "accuracy"), "informative"] and summary.loc[("mrpc", "f1"), "chance"] == 0.5
    assert summary.loc[("mrpc", "accuracy"), "ci_low"] <= 0.5 <= summary.loc[("mrpc", "accuracy"), "ci_high"]


def test_forced_choice_is_the_lowest_mean_nll_of_a_plain_forward(tiny_gpt2_dir):
    """Against a plain computation: the joint text's logits, mean NLL over the word's tokens."""
    model, tok, layout = models.load(str(tiny_gpt2_dir))
    task = TASKS["mmlu"]
    asked = [("Question: Paris is in\n(A) France\n(B) Japan\n(C) Peru\n(D) Chad\nAnswer:", 0),
             ("Question: the man said\n(A) rain\n(B) home\n(C) music\n(D) river\nAnswer:", 1)]
    want = []
    for prompt, _ in asked:
        nll = []
        for word in task.words:
            ids, n_prompt = tok(prompt + " " + word)["input_ids"], len(tok(prompt)["input_ids"])
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            nll.append(float(-np.mean([lp[j - 1, ids[j]].item() for j in range(n_prompt, len(ids))])))
        nll = np.array(nll)
        best = np.flatnonzero(np.isclose(nll, nll.min(), rtol=0, atol=1e-9))
        want.append(int(best[0]) if len(best) == 1 else -1)
    assert downstream.forced_choice(model, tok, layout, asked, task) == want


@needs_data
def test_bad_requests_name_the_setting_and_other_content_is_refused(tmp_path):
    data = items("rte")
    with pytest.raises(DownstreamError, match="shots = 11: the pool holds 10"):
        downstream.prompts(TASKS["rte"], data, shots=11, n_tests=1)
    with pytest.raises(DownstreamError, match="n_tests = 300, but rte has 252"):
        downstream.prompts(TASKS["rte"], data, shots=0, n_tests=300)
    (tmp_path / "rte.json").write_text(json.dumps(data[:-1]))
    with pytest.raises(DownstreamError, match="is not the rte set this code pins"):
        downstream.load(TASKS["rte"], tmp_path)
    with pytest.raises(DownstreamError, match="no .*sst2.json"):
        downstream.load(TASKS["sst2"], tmp_path)


@needs_data
def test_the_command_line_scores_a_model_with_its_cis(tiny_gpt2_dir, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "editscale", "downstream", str(tiny_gpt2_dir), "--tasks", "sst2",
                           "cola", "--n-tests", "8"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(line[0], line[1]) for line in lines] == [(t, m) for t in ("sst2", "cola") for m in ("accuracy", "f1", "mcc")]
    long = subprocess.run([sys.executable, "-m", "editscale", "downstream", str(tiny_gpt2_dir), "--tasks", "mmlu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)  # a 256-token context
    assert long.returncode == 2 and "beyond the model's context of 256" in long.stderr, long.stderr
    bad = subprocess.run([sys.executable, "-m", "editscale", "downstream", str(tiny_gpt2_dir), "--shots", "11"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert bad.returncode == 2 and "--shots 11 is not an integer ≥ 0 and ≤ 10" in bad.stderr, bad.stderr


def test_finding_g_pairs_each_point_with_the_unedited_model_and_skips_tasks_at_chance():
    """(g) on answers made so that each verdict must come out one way: SST-2 answered 90% right
    unedited, 60% after one batch of 1024 (a fall), unchanged by EMMET's batch, 85% after 1024
    sequential edits at B = 256 (better than the one batch); CoLA at chance unedited, so it gets
    one "not measured" row and no verdicts."""
    from editscale.workflow import findings
    from editscale.workflow.experiments.downstream import claim_g

    n = 200
    labels = np.arange(n) % 2

    def answers(task, run, algorithm, size, n_edits, wrong):
        prediction = labels.copy()
        prediction[wrong] = 1 - prediction[wrong]
        return pd.DataFrame({"task": task, "run": run, "algorithm": algorithm, "layers": "3", "batch_size": size,
                             "n_edits": n_edits, "item": range(n), "label": labels, "prediction": prediction})

    def first(fraction):  # the first `fraction` of the items answered wrong
        return np.arange(n) < fraction * n

    table = pd.concat([
        answers("sst2", "unedited", "", 0, 0, first(0.1)),
        answers("sst2", "batch", "memit", 1024, 1024, first(0.4)),
        answers("sst2", "batch", "emmet", 1024, 1024, first(0.1)),
        answers("sst2", "sequential", "memit", 256, 512, first(0.12)),  # not the run's last point: not read
        answers("sst2", "sequential", "memit", 256, 1024, first(0.15)),
        answers("sst2", "sequential", "memit", 1024, 1024, first(0.4)),
        answers("cola", "unedited", "", 0, 0, np.random.default_rng(0).random(n) < 0.5),
        answers("cola", "batch", "memit", 1024, 1024, first(0.9)),
    ], ignore_index=True)
    runs = findings.Runs(chosen={"downstream": table}, every={}, n_layers=30, layer="3", window=None,
                         options=Findings(n_boot=500, seed=0))
    rows = claim_g(runs)
    by_statistic = {row["statistic"]: row for row in rows}

    (cola,) = [row for row in rows if "cola" in row["claim"]]
    assert cola["verdict"] == findings.NOT_MEASURED and "not above chance" in cola["statistic"]
    fall = by_statistic["F1(batch B = 1024, 1024 edits) − F1(unedited)"]
    memit = [row for row in rows if row["claim"] == "g. edits cost general ability (sst2, memit, batch)"]
    assert memit == [fall] and fall["verdict"] == findings.REPRODUCED and fall["ci_high"] < 0 and fall["n_cases"] == n
    assert fall["value"] == pytest.approx(downstream.weighted_f1(labels, np.where(first(0.4), 1 - labels, labels))
                                          - downstream.weighted_f1(labels, np.where(first(0.1), 1 - labels, labels)))
    (same,) = [row for row in rows if row["claim"] == "g. edits cost general ability (sst2, emmet, batch)"]
    assert same["verdict"] == findings.INCONCLUSIVE and same["value"] == 0
    assert "F1(sequential B = 256, 1024 edits) − F1(unedited)" in by_statistic  # the run's last point, not 512
    assert not any("512 edits" in statistic for statistic in by_statistic)
    kept = by_statistic["F1(B = 256 × 4) − F1(one batch of 1024)"]
    assert kept["claim"] == "g. smaller sequential B keeps general ability better (sst2, memit)"
    assert kept["verdict"] == findings.REPRODUCED and kept["ci_low"] > 0
    assert len(rows) == 1 + 4 + 1  # cola's; sst2: two batch points, two sequential runs; the comparison
