"""Value optimisation: seconds per fact, the FLOPs a fact costs, and the share of the fp32 roofline.

    python benchmarks/values.py --records 32 --sizes 8 16 32 --layer 3   # SmolLM2 on this machine
    python benchmarks/values.py --paths fast aligned plain --sizes 8     # today's path against the ones it must equal
    python benchmarks/values.py --device cuda --llama3-shape --sizes 8   # random Llama-3-8B-shaped model, bf16
    python benchmarks/values.py --device cuda --policies cuda cpu        # how the loop meets the host (StepPolicy)

Paths (`editscale.editing.values.RUNNERS`): "fast" replays the blocks above L from the subject
on, rows grouped by width; "aligned" is the same in one padded group (the path before width
groups); "plain" is a full forward per step. Every path runs the same facts in the same
process, so the ratios are within one run (and so does each `--policies` entry:
values.POLICIES by device type, "cpu" being the one that drops finished facts at once); speed and v* of each run are compared with the
first run's (the first batch size on the first path).
FLOPs are counted by torch's FlopCounterMode (matmuls and attention, forward and backward; the
elementwise ops it leaves out are a few percent), and the roofline is a matmul of the fast path's own shape timed here.
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


def tiny_llama(device: str):
    """A 2-layer random Llama for the CPU check of the device script (`--tiny`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.eval().requires_grad_(False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def roofline(d_in: int, d_out: int, rows: int, dtype, device: str) -> float:
    """GFLOP/s of a (rows × d_in) @ (d_in × d_out) matmul, the shape of an MLP projection here."""
    a = torch.randn(rows, d_in, dtype=dtype, device=device)
    b = torch.randn(d_in, d_out, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    best, n = 0.0, 20
    for _ in range(5):  # the best of five: the peak this process can reach, not an average under noise
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            a @ b
        sync(device)
        best = max(best, 2 * rows * d_in * d_out * n / (time.perf_counter() - start) / 1e9)
    return best


def counted_flops(fn) -> float:
    """FLOPs of `fn` as torch counts them at dispatch (matmuls and attention, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED)
    parser.add_argument("--llama3-shape", action="store_true", help="random-weight Llama-3-8B shape (needs a GPU)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama (checks the script itself)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--records", type=int, default=32, help="records timed per batch size")
    parser.add_argument("--paths", nargs="+", default=["fast", "aligned"], choices=sorted(values.RUNNERS))
    parser.add_argument("--policies", nargs="+", default=[None], choices=sorted(values.POLICIES),
                        help="step policies to time (default: the device's own)")
    parser.add_argument("--no-flops", action="store_true", help="skip the profiler's FLOP count")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    model, tok, layout = models.load(args.model, device=args.device, dtype=dtype)
    name = f"{args.model} ({args.dtype})"
    if args.llama3_shape:
        model, name = llama3_shaped(args.device), "random Llama-3-8B shape (bf16)"
    elif args.tiny:
        model, name = tiny_llama(args.device), "tiny random Llama"
    facts = data.load_counterfact(data.default_sources(), n=args.records, seed=0).to_dict("records")
    templates = keys.context_templates(model, tok, seed=0)
    p = next(model.parameters())
    peak = roofline(model.config.hidden_size, model.config.intermediate_size, 256, p.dtype, args.device)
    print(f"# {name} layer {args.layer} on {args.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {len(facts)} records, torch {torch.__version__}; "
          f"{len(templates)} templates + the KL prompt per fact")
    print(f"# roofline: {peak:.1f} GFLOP/s ({p.dtype} matmul 256 × {model.config.hidden_size} × "
          f"{model.config.intermediate_size})")
    first = None  # every run is compared with the first: the first batch size on the first path
    runs = [(size, path, policy) for size in args.sizes for path in args.paths for policy in args.policies]
    for size, path, policy in runs:
        label = path if policy is None else f"{path}/{policy}"
        run = lambda: values.compute_values(model, tok, layout, args.layer, facts, templates,  # noqa: E731
                                            batch_size=size, path=path,
                                            policy=policy and values.POLICIES[policy])
        sync(args.device)
        start = time.perf_counter()
        out = run()
        sync(args.device)
        seconds = (time.perf_counter() - start) / len(facts)
        first = first or (f"{label} at batch {size}", seconds, out)
        rel = ((out.v_star - first[2].v_star).norm(dim=1) / first[2].v_star.norm(dim=1)).max().item()
        line = (f"batch {size:>3} {label:>7}: {seconds:6.2f} s/fact  x{first[1] / seconds:5.2f} vs {first[0]}  "
                f"mean steps {out.steps.float().mean():.1f}, converged {int(out.converged.sum())}/{len(facts)}, "
                f"max |Δv*|/|v*| vs {first[0]} {rel:.1e}")
        if not args.no_flops and args.device == "cpu":
            gflop = counted_flops(run) / 1e9 / len(facts)
            line += f"  {gflop:.0f} GFLOP/fact, {gflop / seconds:.1f} GFLOP/s = {gflop / seconds / peak:.0%} of roofline"
        print(line, flush=True)


if __name__ == "__main__":
    main()
