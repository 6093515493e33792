"""The cost of one downstream evaluation point (finding g) and what the model can do at all:
every task's accuracy, weighted F1 and MCC with bootstrap CIs on the unedited model, and the
seconds the whole check took, on the machine it runs on.

    PYTHONPATH=src python benchmarks/downstream.py [--model smollm2-135m] [--n-tests 100] [--method forced]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import editscale
from editscale.evaluation.downstream import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=editscale.models.EMBEDDED)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--n-tests", type=int, default=100)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--method", default="forced", choices=["forced", "generate"])
    args = parser.parse_args()
    model, tok, layout = editscale.models.load(args.model)
    print(f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {args.model}")
    per_task = {}
    summaries = []
    for task in args.tasks:
        start = time.perf_counter()
        _, summary = editscale.downstream(model, tok, [task], n_tests=args.n_tests, shots=args.shots,
                                          method=args.method, layout=layout)
        per_task[task] = time.perf_counter() - start
        summaries.append(summary)
    for summary in summaries:
        for r in summary.itertuples(index=False):
            print(f"{r.task:5} {r.metric:8} {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]  chance {r.chance:.2f}  "
                  f"above chance: {'yes' if r.informative else 'no'}")
    print("seconds: " + ", ".join(f"{t} {s:.1f}" for t, s in per_task.items()) + f"; one point {sum(per_task.values()):.1f}")


if __name__ == "__main__":
    main()
