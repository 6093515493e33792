"""Value optimisation throughput: records/s at several batch sizes, measured in one run.

    python benchmarks/values.py                       # SmolLM2 on this machine, layer 1
    python benchmarks/values.py --device cuda --model smollm2-135m --sizes 1 8 32
    python benchmarks/values.py --device cuda --llama3-shape   # random Llama-3-8B-shaped model, bf16

It reports what it measured, on the machine it ran on; ratios are against batch size 1
within the same run.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editscale import data, models
from editscale.editing import keys, values


def llama3_shaped(device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED)
    parser.add_argument("--llama3-shape", action="store_true", help="random-weight Llama-3-8B shape (needs a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--records", type=int, default=32, help="records timed per batch size")
    parser.add_argument("--plain", action="store_true", help="also time the plain full-forward path at batch 1")
    args = parser.parse_args()

    model, tok, layout = models.load(args.model, device=args.device)
    name = args.model
    if args.llama3_shape:
        model, name = llama3_shaped(args.device), "random Llama-3-8B shape (bf16)"
    facts = data.load_counterfact(data.default_sources(), n=args.records, seed=0).to_dict("records")
    templates = keys.context_templates(model, tok, seed=0)
    print(f"# {name} layer {args.layer} on {args.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {len(facts)} records, torch {torch.__version__}")
    runs = [(size, True) for size in args.sizes] + ([(1, False)] if args.plain else [])
    base = None
    for size, fast in runs:
        start = time.perf_counter()
        out = values.compute_values(model, tok, layout, args.layer, facts, templates, batch_size=size, fast=fast)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = len(facts) / (time.perf_counter() - start)
        base = base or rate
        label = f"batch {size:>3}" + ("" if fast else " (plain full forward)")
        print(f"{label}: {rate:7.3f} records/s  ({1 / rate:6.2f} s/record)  x{rate / base:5.2f} vs batch 1  "
              f"mean steps {out.steps.float().mean():.1f}, converged {int(out.converged.sum())}/{len(facts)}")


if __name__ == "__main__":
    main()
