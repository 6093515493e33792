"""Live scoring's cost against teacher-forced scoring on the same cases, in one run on this machine.

    python benchmarks/live.py                       # SmolLM2 on this CPU
    python benchmarks/live.py --device cuda --format full

Both protocols score the same records, unedited and under independent batch edits (per-row
low-rank edits of rank B, as batch editing scores them): teacher-forced runs one forward over
every (prompt, target) pair; live decodes each prompt greedily with a KV cache, at most its
answer's tokens plus `live.MARGIN`. The edits are random factors of real scale: evaluation cost
does not depend on what an edit says. Prints seconds and the ratio live / teacher-forced (the aim
is at most 1.5).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editscale import data, models
from editscale.evaluation import live, metrics
from editscale.evaluation.scoring import LowRankEdits


def timed(fn, repeats: int):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--format", choices=("easyedit", "full"), default="easyedit")
    parser.add_argument("--cases", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="edits in each independent batch")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model, tok, layout = models.load(args.model, device=args.device)
    source = data.registry.resolve_sources("counterfact", "auto-easyedit" if args.format == "easyedit" else "auto")
    records = data.load_counterfact(source, n=args.cases, seed=0)
    print(f"# {args.model} on {args.device} ({platform.machine()}, {torch.get_num_threads()} threads), "
          f"{len(records)} {args.format}-format cases, torch {torch.__version__}; best of {args.repeats}")
    torch.manual_seed(0)
    d_out, d_in = layout.weight(model, args.layer).shape
    scale = layout.weight(model, args.layer).norm() / (d_out * d_in) ** 0.5
    n_edits = -(-len(records) // args.batch)
    edits = LowRankEdits([scale * torch.randn(d_out, args.batch) for _ in range(n_edits)],
                         [torch.randn(d_in, args.batch) / d_in ** 0.5 for _ in range(n_edits)])
    case_edit = {case: i // args.batch for i, case in enumerate(records.case_id)}
    live.prompt_table(records)  # the stop tokens are found once per tokenizer, outside the timing
    from editscale.evaluation import decoding

    decoding.stop_tokens(tok)
    for label, kw in (("unedited", {}), (f"batch edits (B = {args.batch})", dict(edits=edits, case_edit=case_edit,
                                                                                  layer=args.layer))):
        times = {}
        for protocol in metrics.PROTOCOLS:
            _, times[protocol] = timed(lambda: metrics.score(model, tok, records, layout=layout, protocol=protocol,
                                                             **kw), args.repeats)
        ratio = times["live"] / times["teacher_forced"]
        print(f"{label:28s} teacher-forced {times['teacher_forced']:6.2f} s   live {times['live']:6.2f} s   "
              f"live / teacher-forced x{ratio:.2f}")


if __name__ == "__main__":
    main()
