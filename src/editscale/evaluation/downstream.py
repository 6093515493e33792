"""General ability after edits: the downstream check of the seed authors' `glue_eval`
(scalable-model-editing/unified-model-editing, shared by AlphaEdit, ENCORE, RLEdit and NAS), on
their own subsets of SST-2, MRPC, CoLA, RTE, an NLI set and MMLU (docs/fidelity.md, Downstream).

Each task is declared once in `TASKS`: its data file, its prompt (few-shot block and test
question, as the reference writes them), its answer words and its parsing rule. Items 0–9 of each
file are the few-shot pool, items 10… the tests, in file order.

Two ways to answer a test item:
- `forced` (the default): the answer word with the lowest mean NLL after the prompt, the
  reference's `predictions_new`. No parsing, cheap, and measurable on a 135M model.
- `generate`: the reference's headline, greedy generation of `gen_len` tokens and its parsing rule;
  an unparseable answer is −1 and counts as wrong.

Scores per task: accuracy, scikit-learn's weighted F1 and multiclass MCC (the reference's
definitions, −1 kept as a predicted class), each with a bootstrap 95% CI over the test items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from editscale import domains, paths
from editscale.evaluation import bootstrap
from editscale.settings import Downstream, Findings

POOL = 10  # glue_eval's FEW_SHOT_TEST_SPLIT: items[:10] are the few-shot pool, items[10:] the tests
ANSWER_TOKENS = 8  # room left after a prompt for a forced-choice answer word


@dataclass(frozen=True)
class Task:
    name: str
    file: str  # under the offline data's downstream/ folder
    sha256: str  # of that file (its manifest.json), so other content is never read under this name
    words: tuple  # label id -> the answer word the model is asked for
    gold: Callable[[dict], int]  # an item's label id
    shot: Callable[[dict], str]  # a few-shot block, ending in "\n"
    question: Callable[[dict], str]  # the test prompt
    parse: Callable[[str, str], int]  # (prompt, continuation) -> label id, or -1 when unparseable

    @property
    def chance(self) -> float:
        """Accuracy and weighted F1 of a uniform guess on these balanced sets: 1 / number of labels."""
        return 1 / len(self.words)


def _after(marker: str, first: str, second: str, ids: tuple) -> Callable[[str, str], int]:
    """glue_eval's binary rule: the generated text (prompt and continuation) after its last
    `marker`, stripped and lower-cased; `first` anywhere in it gives ids[0], else `second` ids[1],
    else −1. Substrings: 'no' also matches 'not' and 'know', as in the reference."""

    def parse(prompt: str, continuation: str) -> int:
        text = (prompt + continuation).split(marker)[-1].strip().lower()
        return ids[0] if first in text else ids[1] if second in text else -1

    return parse


def _mmlu_parse(prompt: str, continuation: str) -> int:
    """glue_eval's MMLU rule, on the continuation only: the first of 'a\\n', 'b\\n', 'c\\n', 'd\\n'
    (a letter right before a newline) found anywhere in it, in that order."""
    text = continuation.lower()
    return next((i for i, letter in enumerate("abcd") if f"{letter}\n" in text), -1)


def _mmlu_body(item: dict) -> str:
    return f"Question: {item['question']}\n" + "".join(f"({l}) {c}\n" for l, c in zip("ABCD", item["choices"]))


TASKS = {t.name: t for t in (
    Task("sst2", "sst2.json", "eea698d67d3740e7aea93f47a55b31ddfcd193268ffeee196b93f600cdb0ac3b",
         ("negative", "positive"), lambda i: int(i["label"]),
         lambda i: f"Review : {i['sentence']}\nSentiment : {('negative', 'positive')[i['label']]}\n",
         lambda i: f"Review :{i['sentence']}\nSentiment :",  # no space after "Review :", as in the reference
         _after("Sentiment :", "positive", "negative", (1, 0))),
    Task("mrpc", "mrpc.json", "0ae0d49452f7c6f84b5dee6f89278882c0658bc05e9285ec3cbb9f5cda568f87",
         ("No", "Yes"), lambda i: int(i["label"]),
         lambda i: (f"Are the sentences paraphrases of each other.\nSentence 1: {i['sentence1']}\nSentence 2: "
                    f"{i['sentence2']}\nAnswer: {('No', 'Yes')[i['label']]}\n"),
         lambda i: (f"Are the sentences paraphrases of each other.\nSentence 1: {i['sentence1']}\nSentence 2: "
                    f"{i['sentence2']}\nAnswer:"),
         _after("Answer:", "yes", "no", (1, 0))),
    Task("cola", "cola.json", "d98993daffdc59131cb0d649604cb06ee0d702434ef540c3b289fa25de9c25b8",
         ("No", "Yes"), lambda i: int(i["label"]),
         lambda i: (f"Is this sentence linguistically acceptable?\nSentence: {i['sentence']}\n"
                    f"Answer: {('No', 'Yes')[i['label']]}\n"),
         lambda i: f"Is this sentence linguistically acceptable?\nSentence: {i['sentence']}\nAnswer: ",
         _after("Answer:", "yes", "no", (1, 0))),
    # The reference's RTE: the GLUE label as it is (0 entailment, 1 not), shown as 0 "False", 1 "True".
    Task("rte", "rte.json", "8299b22413787a6def3f2650ea0cd209d15cdf8a7e561dd9ed38b3cb53e16060",
         ("False", "True"), lambda i: int(i["label"]),
         lambda i: (f"{i['sentence1']}\nquestion: {i['sentence2']} True or False?\n"
                    f"answer: {('False', 'True')[i['label']]}\n"),
         lambda i: f"{i['sentence1']}\nquestion: {i['sentence2']} True or False?\nanswer:",
         _after("answer:", "false", "true", (0, 1))),
    Task("nli", "nli.json", "e89d7c14f691d0aefaba95bd5f3bf5ffe4dd83fff46ec01c4eab138b40e9e483",
         ("False", "True"), lambda i: int(i["label"] == "entailment"),
         lambda i: (f"{i['sentence1']} entails the {i['sentence2']} True or False? Answer: "
                    f"{'True' if i['label'] == 'entailment' else 'False'}\n"),
         lambda i: f"{i['sentence1']} entails the {i['sentence2']} True or False? Answer:",
         _after("True or False? Answer:", "true", "false", (1, 0))),
    Task("mmlu", "mmlu.json", "a248f031a3945d51036f88e071f9719f9b5f0d49768d4ccbdc7b2c2fe98a2b52",
         ("A", "B", "C", "D"), lambda i: int(i["answer"]),
         lambda i: f"{_mmlu_body(i)}Answer: {'ABCD'[i['answer']]}\n",
         lambda i: f"{_mmlu_body(i)}Answer:",
         _mmlu_parse),
)}


class DownstreamError(ValueError):
    """A downstream task that cannot be read or asked as given; the message names the task, file or setting."""


def load(task: Task, data_dir=None) -> list[dict]:
    """The task's items, checked against the pinned sha256 (other content is never read as this task)."""
    folder = Path(data_dir) if data_dir is not None else (paths.shared_data() or Path("missing")) / "downstream"
    path = folder / task.file
    if not path.is_file():
        raise DownstreamError(f"{task.name}: no {path}; the downstream sets are the reference's glue_eval/dataset/"
                              f"{task.name}.pkl as JSON (shared/data/downstream, with its manifest.json)")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != task.sha256:
        raise DownstreamError(f"{path} is not the {task.name} set this code pins (sha256 "
                              f"{hashlib.sha256(content).hexdigest()[:12]}, expected {task.sha256[:12]})")
    return json.loads(content)


def prompts(task: Task, items: list, *, shots: int, n_tests: int | None, budget: int | None = None,
            count: Callable[[str], int] | None = None) -> list[tuple[str, int]]:
    """(prompt, gold label id) of each test item: the first `shots` pool blocks, concatenated, then
    the question. With a token `budget` (the context less the answer's tokens) and a token counter,
    a prefix of the blocks is kept, stopping at the first that would not fit, as the reference does."""
    if not 0 <= shots <= POOL:
        raise DownstreamError(f"downstream.shots = {shots}: the pool holds {POOL} items; use 0 to {POOL}")
    tests = items[POOL:]
    if n_tests is not None:
        if n_tests > len(tests):
            raise DownstreamError(f"downstream.n_tests = {n_tests}, but {task.name} has {len(tests)} test items")
        tests = tests[:n_tests]
    blocks = [task.shot(item) for item in items[:shots]]
    out = []
    for item in tests:
        question = task.question(item)
        kept, left = "", None if budget is None else budget - count(question)
        for block in blocks:
            if left is not None:
                left -= count(block)
                if left < 0:
                    break
            kept += block
        out.append((kept + question, task.gold(item)))
    return out


# --- Metrics: scikit-learn's definitions, with −1 (unparseable) kept as a predicted class --------

def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean())


def weighted_f1(labels, predictions) -> float:
    """sklearn's f1_score(average="weighted"): each true class's F1 (0 where undefined), weighted by
    its support; a predicted class no item has (−1) weighs nothing but costs its items' recall."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    total = 0.0
    for c in np.unique(labels):
        tp = np.sum((predictions == c) & (labels == c))
        precision = tp / max(np.sum(predictions == c), 1)
        recall = tp / np.sum(labels == c)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * np.sum(labels == c)
    return float(total / len(labels))


def mcc(labels, predictions) -> float:
    """sklearn's matthews_corrcoef, multiclass (−1 a class of its own): (c·s − t·p) /
    √((s² − p·p)(s² − t·t)) over the confusion matrix, 0 where the denominator is."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    t = np.array([np.sum(labels == c) for c in classes], dtype=float)  # true counts
    p = np.array([np.sum(predictions == c) for c in classes], dtype=float)  # predicted counts
    c, s = float(np.sum(labels == predictions)), float(len(labels))
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


METRICS = {"accuracy": accuracy, "f1": weighted_f1, "mcc": mcc}


def summarise(items: pd.DataFrame, options: Findings = Findings()) -> pd.DataFrame:
    """Per task (and whatever else `items` is grouped by: its columns before `item`), each metric
    with a bootstrap 95% CI over the test items (seeded), the task's chance level, and whether the
    model is above chance by the CI's lower end (`informative`: else the task cannot show a fall)."""
    keys = [c for c in items.columns if c not in ("item", "label", "prediction")]
    rows = []
    for key, group in items.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        labels, predictions = group.label.to_numpy(), group.prediction.to_numpy()
        picks = bootstrap.resample(len(group), options.n_boot, options.seed)  # (n_boot, items)
        task = TASKS[dict(zip(keys, key))["task"]]
        for name, metric in METRICS.items():
            boot = [metric(labels[pick], predictions[pick]) for pick in picks]
            low, high = bootstrap.interval(boot)
            chance = 0.0 if name == "mcc" else task.chance
            rows.append({**dict(zip(keys, key)), "metric": name, "value": metric(labels, predictions),
                         "ci_low": float(low), "ci_high": float(high), "chance": chance,
                         "informative": bool(low > chance), "n_tests": len(group)})
    return pd.DataFrame(rows)


# --- Asking the model ----------------------------------------------------------------------------

def forced_choice(model, tokenizer, layout, asked: list[tuple[str, int]], task: Task, *, batch_size: int = 64
                  ) -> list[int]:
    """The label whose word, after a space, has the lowest mean NLL after the prompt (the
    reference's `predictions_new`); ties: 0 for a binary task, −1 for MMLU, as its strict `>`."""
    from editscale.evaluation.scoring import score_pairs

    pairs = [(prompt, " " + word) for prompt, _ in asked for word in task.words]
    nll = score_pairs(model, tokenizer, layout, pairs, batch_size=batch_size).nll.numpy().reshape(len(asked), -1)
    out = []
    for row in nll:
        best = np.flatnonzero(row == row.min())
        out.append(int(best[0]) if len(best) == 1 else (0 if len(task.words) == 2 else -1))
    return out


def generated(model, tokenizer, asked: list[tuple[str, int]], task: Task, *, gen_len: int) -> list[int]:
    """The reference's headline: greedy generation of `gen_len` tokens, parsed by the task's rule."""
    import torch

    device = next(model.parameters()).device
    out = []
    for prompt, _ in asked:
        ids = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            made = model.generate(**ids, max_new_tokens=gen_len, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        continuation = tokenizer.decode(made[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append(task.parse(prompt, continuation))
    return out


def evaluate(model, tokenizer, tasks=None, *, n_tests: int | None = Downstream.n_tests,
             shots: int = Downstream.shots, method: str = Downstream.method, gen_len: int = Downstream.gen_len,
             data_dir=None, layout=None, options: Findings = Findings()):
    """The downstream check of a model, edited or not, in one call: (per-item table, summary).

    `tasks` are names of `TASKS` (None: all); `n_tests` test items each (the first after the pool; None: all),
    `shots` few-shot blocks, `method` "forced" or "generate" (`gen_len` tokens)."""
    from editscale.models import context_length, layout_for

    tasks = list(TASKS) if tasks is None else list(tasks)
    unknown = [name for name in tasks if name not in TASKS]
    if unknown:
        raise DownstreamError(f"downstream tasks {unknown} are unknown; use some of {', '.join(TASKS)}")
    for name, value in (("n_tests", n_tests), ("shots", shots), ("method", method), ("gen_len", gen_len)):
        if not (name == "n_tests" and value is None):  # None: every test item
            try:
                domains.check(name, value, domains.of(Downstream, name), joiner="=")
            except ValueError as error:
                raise DownstreamError(str(error)) from None
    layout = layout or layout_for(model)
    context = context_length(model)
    budget = context - (gen_len if method == "generate" else ANSWER_TOKENS)
    if budget < 1:  # gen_len's fault, not a test item's
        raise DownstreamError(f"gen_len={gen_len} leaves no room for a question in the model's context of {context} "
                              f"tokens; lower gen_len below {context}")
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    rows = []
    for name in tasks:
        task = TASKS[name]
        asked = prompts(task, load(task, data_dir), shots=shots, n_tests=n_tests, budget=budget, count=count)
        too_long = [(i, count(prompt)) for i, (prompt, _) in enumerate(asked) if count(prompt) > budget]
        if too_long:
            i, length = too_long[0]
            raise DownstreamError(f"{name}: test item {POOL + i} is {length} tokens, beyond the model's context of "
                                  f"{context} with its answer ({len(too_long)} items are); lower n_tests, or use a "
                                  f"model with a longer context")
        answers = (forced_choice(model, tokenizer, layout, asked, task) if method == "forced"
                   else generated(model, tokenizer, asked, task, gen_len=gen_len))
        rows += [{"task": name, "item": i, "label": gold, "prediction": answer}
                 for i, ((_, gold), answer) in enumerate(zip(asked, answers))]
    items = pd.DataFrame(rows)
    return items, summarise(items, options)
