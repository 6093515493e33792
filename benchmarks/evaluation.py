"""Evaluation throughput in cases/s, measured in one run on the machine it runs on.

    python benchmarks/evaluation.py                 # SmolLM2 on this CPU
    python benchmarks/evaluation.py --device cuda

1. Full-format cases (13 prompts × 2 targets): batched scoring vs one case at a time.
2. Independent single edits (ROME, rank 1): the batched per-row evaluator vs the
   edit → evaluate → revert loop. The edits use real keys and C but random residuals:
   evaluation cost does not depend on what the edit says, and value optimisation
   would dominate the run otherwise.
Also prints the unedited model's aggregate metrics and generation entropy.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editscale import data, editing, models, paths
from editscale.data import corpus
from editscale.editing import covariance, keys
from editscale.evaluation import fluency, metrics
from editscale.evaluation.scoring import LowRankEdits


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--fluency-cases", type=int, default=50)
    args = parser.parse_args()

    model, tok, layout = models.load(args.model, device=args.device)
    records = data.load_counterfact(data.default_sources(), n=args.cases, seed=0)
    print(f"# {args.model} on {args.device} ({platform.machine()}, {torch.get_num_threads()} threads), "
          f"{len(records)} full-format cases, torch {torch.__version__}")

    batched, t_batched = timed(lambda: metrics.score(model, tok, records, layout=layout, batch_size=args.batch_size))
    _, t_single = timed(lambda: [metrics.score(model, tok, records.iloc[[i]], layout=layout)
                                 for i in range(len(records))])
    print(f"scoring, batched:        {len(records) / t_batched:7.2f} cases/s")
    print(f"scoring, one at a time:  {len(records) / t_single:7.2f} cases/s   batched is x{t_single / t_batched:.2f}")

    texts = corpus.iter_texts(paths.shared_data() / "corpus" / "wikipedia-articles.txt")
    C = covariance.second_moments(model, tok, layout, [args.layer], texts, max_tokens=20_000, max_length=2048,
                             progress=False)[args.layer].mean()
    facts = records.to_dict("records")
    K = keys.compute_keys(model, tok, layout, args.layer, facts, ["{}"]).T
    R = torch.randn(layout.weight(model, args.layer).shape[0], len(facts), generator=torch.Generator().manual_seed(0))
    solved = editing.independent_batches(editing.prepare(editing.EditConfig("rome", args.layer), C), K, R, 1)
    edits = [(e.A, e.B) for e in solved]
    low_rank = LowRankEdits([a for a, _ in edits], [b for _, b in edits])
    case_edit = {case: i for i, case in enumerate(records.case_id)}
    _, t_edits = timed(lambda: metrics.score(model, tok, records, layout=layout, batch_size=args.batch_size,
                                             edits=low_rank, case_edit=case_edit, layer=args.layer))

    def loop():
        for i, (A, B) in enumerate(edits):
            delta = A @ B.T
            editing.apply_delta(model, layout, args.layer, delta)
            metrics.score(model, tok, records.iloc[[i]], layout=layout)
            editing.revert_delta(model, layout, args.layer, delta)

    _, t_loop = timed(loop)
    print(f"independent edits, batched: {len(records) / t_edits:7.2f} cases/s")
    print(f"independent edits, loop:    {len(records) / t_loop:7.2f} cases/s   batched is x{t_loop / t_edits:.2f}")

    summary = metrics.aggregate(metrics.per_case(batched)).set_index("metric")
    print("unedited:", ", ".join(f"{m} {summary.loc[m, 'mean']:.1f}" for m in ("ES", "PS", "NS", "Score")))
    entropy, t_fl = timed(lambda: fluency.generation_entropy(model, tok, records, n_cases=args.fluency_cases,
                                                             max_new_tokens=50))
    print(f"unedited generation entropy over {len(entropy)} cases (greedy, 50 tokens): "
          f"{entropy.entropy.mean():.3f} ({t_fl:.0f} s)")


if __name__ == "__main__":
    main()
