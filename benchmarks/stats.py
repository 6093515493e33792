"""Second-moment throughput in tokens/s: stopping after the hooked layer vs running (nearly) all layers.

    python benchmarks/stats.py                       # SmolLM2 on this CPU, layer 1 vs layers [1, 29]
    python benchmarks/stats.py --max-length 1000     # whole articles up to 1000 tokens
    python benchmarks/stats.py --device cuda --tokens 200000

Texts are whole Wikipedia articles (one sequence each, truncated at --max-length), batched by
length under --batch-tokens padded tokens, as the stats stage runs them.
"""

from __future__ import annotations

import argparse
import time

import torch

from editscale import models, paths
from editscale.data import corpus
from editscale.editing.covariance import second_moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    model, tok, layout = models.load(args.model, device=args.device)
    deepest = layout.n_layers(model) - 1
    source = paths.shared_data() / "corpus" / "wikipedia-articles.txt"
    second_moments(model, tok, layout, [1], corpus.iter_texts(source), max_tokens=2048, max_length=args.max_length,
                   progress=False)  # warm-up
    print(f"# {args.model} on {args.device}, {torch.get_num_threads()} threads, {args.tokens} tokens, "
          f"batch_tokens {args.batch_tokens}, max_length {args.max_length}")
    rates = {}
    for layers in ([1], [1, deepest]):
        start = time.perf_counter()
        moments = second_moments(model, tok, layout, layers, corpus.iter_texts(source), max_tokens=args.tokens,
                                 batch_tokens=args.batch_tokens, max_length=args.max_length, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rates[tuple(layers)] = moments[1].count / seconds
        print(f"layers {layers}: {moments[1].count} tokens in {seconds:.1f} s = {rates[tuple(layers)]:,.0f} tokens/s")
    print(f"stopping after layer 1 is x{rates[(1,)] / rates[(1, deepest)]:.1f} faster")


if __name__ == "__main__":
    main()
