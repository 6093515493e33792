"""Solver time and checkpoint bytes at Llama-3-8B's shapes, the old path against the new, in one run.

Random tensors shaped like Llama-3-8B's down_proj (d_in 14336, d_out 4096); no model is loaded.

    python benchmarks/scale.py                    # this CPU: new path at d_in 14336, old at 1536 and 3072
    python benchmarks/scale.py --device cuda --old-d 1536,3072,6144
    python benchmarks/scale.py --d-in 3072 --quick  # a few minutes, for a smoke test

Old path: the d_in × d_in solvers editscale had before (`algorithms.dense`: a full spectrum and a
factorisation of a d_in × d_in system on every call). It is timed at smaller d_in and scaled by
(14336 / d)³, the cost of those factorisations, which is said beside every projected figure.
New path: `algorithms.prepare` once per (layer, C), then `Prepared.solve` per batch.

The projection of `config/paper-llama3-8b.yaml` counts every solve of its grid: the sweep's
32 layers × 3 algorithms × 1000 single edits, batch editing of 4096 edits at B = 16 … 4096 for
MEMIT and EMMET, and sequential runs of 4096 edits at B = 1 … 4096 for MEMIT, EMMET and
AlphaEdit (AlphaEdit's memory grows to 4096 keys). Value optimisation, evaluation and C are
not solver work and not counted here.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from editscale import algorithms, artifacts, editing
from editscale.algorithms import KeyMemory, dense

LLAMA = dict(d_in=14336, d_out=4096, layers=32, sweep_n=1000, n=4096)
PAPER_BATCH = [16, 64, 256, 1024, 4096]
PAPER_SEQUENTIAL = [1, 16, 64, 256, 1024, 4096]
SETTINGS = dict(mom2_update_weight=15000.0, emmet_lambda=0.1, nullspace_threshold=1e-2, alphaedit_l2=10.0)


def synced(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    """Best of `repeat` wall times of fn(), and its last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        synced(device)
        start = time.perf_counter()
        out = fn()
        synced(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def second_moment(d, device, seed=0):
    """A dense SPD C with a known spectrum (half of it under AlphaEdit's threshold), built in O(d²):
    C = H diag(e) H with H = I − 2vvᵀ a Householder reflection."""
    g = torch.Generator().manual_seed(seed)
    e = torch.cat([torch.full((d // 2,), 1e-3), torch.linspace(0.5, 50.0, d - d // 2)]).double()
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v /= v.norm()
    w = e * v
    C = torch.diag(e) - 2 * torch.outer(v, w) - 2 * torch.outer(w, v) + 4 * float(v @ w) * torch.outer(v, v)
    return C.float().to(device)


def keys(d, n, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, n, generator=g).to(device)


def prepare(name, C):
    return algorithms.prepare(algorithms.get(name), C, SETTINGS)


def new_solve_times(d_in, d_out, device, sizes, kprev, repeat, sweep_n=None):
    """{(algorithm, n, m): seconds per solve} on the prepared path; prepare times; and the time of
    one sweep job's solves (`sweep_n` single MEMIT edits through `independent_batches`)."""
    C = second_moment(d_in, device)
    R_all = keys(d_out, max(sizes), device, 1)
    K_all = keys(d_in, max(sizes), device, 2)
    times, prep, solvers = {}, {}, {}
    # ROME, MEMIT and EMMET prepare the same thing (C's factor and κ): time it once, share it.
    prep["memit"], solvers["memit"] = timed(lambda: prepare("memit", C), device)
    prep["alphaedit"], solvers["alphaedit"] = timed(lambda: prepare("alphaedit", C), device)
    for name in ("rome", "emmet"):
        solvers[name] = algorithms.prepare(algorithms.get(name), C, SETTINGS, operator=solvers["memit"].T)
        prep[name] = prep["memit"]
    for name, solver in solvers.items():
        for n in ([1] if name == "rome" else sizes):
            K, R = K_all[:, :n], R_all[:, :n]
            for m in (kprev if name == "alphaedit" else [0]):
                memory = None
                if m:
                    memory = KeyMemory()
                    earlier = keys(d_in, m, device, 3)
                    memory.absorb(earlier, solver.transform(earlier))
                times[(name, n, m)], _ = timed(lambda: solver.solve(K, R, memory=memory), device, repeat)
    sweep_job = None
    if sweep_n:
        K, R = keys(d_in, sweep_n, device, 4), keys(d_out, sweep_n, device, 5)
        sweep_job, _ = timed(lambda: editing.independent_batches(solvers["memit"], K, R, 1), device)
    return times, prep, sweep_job


def old_solve_times(d, d_out, device, n, m_ratio, repeat):
    """Seconds per call of the plain d × d solvers at dimension d, with n keys and K_prev of m_ratio·d keys."""
    C = second_moment(d, device).double()
    K, R = keys(d, n, device, 2), keys(d_out, n, device, 1)
    P = dense.nullspace_projector(C, SETTINGS["nullspace_threshold"])
    K_prev = keys(d, max(1, int(m_ratio * d)), device, 3)
    calls = {
        "rome": lambda: dense.rome(K[:, 0], R[:, 0], C),
        "memit": lambda: dense.memit(K, R, C, SETTINGS["mom2_update_weight"]),
        "emmet": lambda: dense.emmet(K, R, C, SETTINGS["emmet_lambda"], SETTINGS["mom2_update_weight"]),
        "alphaedit": lambda: dense.alphaedit(K, R, P, K_prev, SETTINGS["alphaedit_l2"]),
    }
    return {name: timed(call, device, repeat)[0] for name, call in calls.items()}


def interpolate(points: dict, x: float) -> float:
    """Piecewise-linear in x through measured (x, seconds) points, flat beyond the ends."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    for a, b in zip(xs, xs[1:]):
        if x <= b:
            return points[a] + (points[b] - points[a]) * (x - a) / (b - a)
    return points[xs[-1]] * (x / xs[-1]) ** 3  # beyond the last point, cubic in the system size


def project_new(times, prep, sweep_job, sizes, kprev, shape):
    """Seconds the new path spends on solves over the paper grid, per experiment."""
    n_total = shape["n"]
    by_n = {name: {n: times[(name, n, 0)] for n in sizes} for name in ("memit", "emmet")}

    def alpha(n, m):  # bilinear in (n, m) through the measured grid
        return interpolate({s: interpolate({k: times[("alphaedit", s, k)] for k in kprev}, m) for s in sizes}, n)

    # Sweep: each (layer, algorithm) job prepares once and solves its single edits together.
    sweep = shape["layers"] * 3 * (prep["memit"] + sweep_job)
    batch = sum(prep[a] + (n_total // b) * interpolate(by_n[a], b) for a in ("memit", "emmet") for b in PAPER_BATCH)
    sequential = 0.0
    for b in PAPER_SEQUENTIAL:
        batches = n_total // b
        sequential += sum(prep[a] + batches * interpolate(by_n[a], b) for a in ("memit", "emmet"))
        # AlphaEdit's system grows with its memory: sum over m = 0, b, 2b, ... on at most 64 points.
        step = max(1, batches // 64)
        sequential += prep["alphaedit"] + sum(alpha(b, i * b) * step for i in range(0, batches, step))
    return {"sweep": sweep, "batch": batch, "sequential": sequential}


def count_calls(shape):
    n = shape["n"]
    return {"sweep": shape["layers"] * shape["sweep_n"] * 3,
            "batch": 2 * sum(n // b for b in PAPER_BATCH),
            "sequential": 3 * sum(n // b for b in PAPER_SEQUENTIAL)}


def checkpoint_bytes(d_in, d_out, folder: Path, snapshot_every: int):
    """Bytes written per sequential batch at B = 1, 16, 1024, measured by writing the files: the old
    format (weight in bf16, total ΔW and all earlier keys in f32, every batch) and the new (the batch's
    factors, its keys for AlphaEdit, and a bf16 weight snapshot every `snapshot_every` batches)."""
    rows = []
    weight = torch.zeros(d_out, d_in, dtype=torch.bfloat16)
    artifacts.write_safetensors({"weight": weight}, folder / "snapshot.safetensors")
    snapshot = (folder / "snapshot.safetensors").stat().st_size
    for b in (1, 16, 1024):
        m = LLAMA["n"] - b  # the last batch of a 4096-edit AlphaEdit run: the old file's largest
        old = folder / f"old-{b}.safetensors"
        artifacts.write_safetensors({"delta": weight.float(), "weight": weight,
                                     "k_prev": torch.zeros(d_in, m + b)}, old)
        new = folder / f"new-{b}.safetensors"
        artifacts.write_safetensors({"A": torch.zeros(d_out, b), "B": torch.zeros(d_in, b),
                                     "keys": torch.zeros(d_in, b)}, new)
        rows.append((b, old.stat().st_size, new.stat().st_size, new.stat().st_size + snapshot / snapshot_every))
        old.unlink()
        new.unlink()
    return rows, snapshot


def grid_volume(d_in, d_out, snapshot_bytes, snapshot_every):
    """Bytes the paper's sequential grid writes (3 algorithms, 4096 edits, B = 1 … 4096), old and new."""
    old = new = 0
    full = d_out * d_in * (2 + 4)
    for b in PAPER_SEQUENTIAL:
        batches = LLAMA["n"] // b
        for algorithm in ("memit", "emmet", "alphaedit"):
            kept = algorithm == "alphaedit"
            old += batches * full + (sum(d_in * 4 * b * (i + 1) for i in range(batches)) if kept else 0)
            new += batches * (d_out + d_in + (d_in if kept else 0)) * 4 * b
            new += (batches - 1) // snapshot_every * snapshot_bytes
    return old, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-in", type=int, default=LLAMA["d_in"])
    parser.add_argument("--d-out", type=int, default=LLAMA["d_out"])
    parser.add_argument("--old-d", default="1536,3072", help="d_in values at which the old path is timed")
    parser.add_argument("--sizes", default="1,16,256,4096")
    parser.add_argument("--kprev", default="0,256,1024,4096")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--snapshot-every", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="sizes 1,16,256 and K_prev 0,256: a smoke test")
    args = parser.parse_args()
    sizes = [int(x) for x in ("1,16,256" if args.quick else args.sizes).split(",")]
    kprev = [int(x) for x in ("0,256" if args.quick else args.kprev).split(",")]
    d, device = args.d_in, args.device
    shape = dict(LLAMA, d_in=d, d_out=args.d_out)
    print(f"# benchmarks/scale.py on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"d_in {d}, d_out {args.d_out}")

    start = time.perf_counter()
    times, prep, sweep_job = new_solve_times(d, args.d_out, device, sizes, kprev, args.repeat, LLAMA["sweep_n"])
    print("\n## New path: prepare once per (layer, C), then per solve (seconds)\n")
    print("| algorithm | prepare | " + " | ".join(f"n = {n}" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for name in ("rome", "memit", "emmet"):
        cells = [f"{times[(name, n, 0)]:.3f}" if (name, n, 0) in times else "" for n in sizes]
        print(f"| {name} | {prep[name]:.1f} | " + " | ".join(cells) + " |")
    print("\n| AlphaEdit, K_prev keys | " + " | ".join(f"n = {n}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for m in kprev:
        print(f"| {m} | " + " | ".join(f"{times[('alphaedit', n, m)]:.3f}" for n in sizes) + " |")
    print(f"\n(AlphaEdit prepare: {prep['alphaedit']:.1f} s. One sweep job's {LLAMA['sweep_n']} single MEMIT edits "
          f"through independent_batches: {sweep_job:.1f} s after prepare.)")

    print("\n## Old path: one d × d system per call (seconds), and at d_in by (d_in / d)³\n")
    old_ds = [int(x) for x in args.old_d.split(",")]
    print("| d | rome (n=1) | memit (n=16) | emmet (n=16) | alphaedit (n=16, K_prev 0.29·d) | new memit n=16 at this d |")
    print("|---|---|---|---|---|---|")
    old_at_d = {}
    for od in old_ds:
        old = old_solve_times(od, args.d_out, device, 16, 4096 / LLAMA["d_in"], args.repeat)
        small, _, _ = new_solve_times(od, args.d_out, device, [16], [0], args.repeat)
        old_at_d = {k: v * (d / od) ** 3 for k, v in old.items()}
        print(f"| {od} | " + " | ".join(f"{old[k]:.3f}" for k in ("rome", "memit", "emmet", "alphaedit"))
              + f" | {small[('memit', 16, 0)]:.4f} |")
    print(f"| {d} (×{(d / old_ds[-1]) ** 3:.0f} from d = {old_ds[-1]}) | "
          + " | ".join(f"{old_at_d[k]:.1f}" for k in ("rome", "memit", "emmet", "alphaedit")) + " | |")

    calls = count_calls(shape)
    if max(sizes) < max(PAPER_BATCH) or max(kprev) < LLAMA["n"]:
        print("\n(no projection of the paper grid: it needs --sizes up to 4096 and --kprev up to 4096)")
        calls = {}
    else:
        new_grid = project_new(times, prep, sweep_job, sizes, kprev, shape)
    per_old = {"sweep": (old_at_d["rome"] + old_at_d["memit"] + old_at_d["emmet"]) / 3,
               "batch": (old_at_d["memit"] + old_at_d["emmet"]) / 2,
               "sequential": (old_at_d["memit"] + old_at_d["emmet"] + old_at_d["alphaedit"]) / 3}
    if calls:
        print(f"\n## Solver time of config/paper-llama3-8b.yaml (old path scaled from d = {old_ds[-1]})\n")
        print("| experiment | solves | old path | new path | old / new |")
        print("|---|---|---|---|---|")
    total_old = total_new = 0.0
    for exp in calls:
        old_s = calls[exp] * per_old[exp]
        total_old += old_s
        total_new += new_grid[exp]
        print(f"| {exp} | {calls[exp]} | {old_s / 3600:,.1f} h | {new_grid[exp] / 3600:.2f} h | "
              f"{old_s / new_grid[exp]:,.0f} |")
    if calls:
        print(f"| all | {sum(calls.values())} | {total_old / 3600:,.1f} h | {total_new / 3600:.2f} h | "
              f"{total_old / total_new:,.0f} |")

    with tempfile.TemporaryDirectory() as tmp:
        rows, snapshot = checkpoint_bytes(d, args.d_out, Path(tmp), args.snapshot_every)
    print(f"\n## Bytes written per sequential batch (snapshot {snapshot / 1e6:.0f} MB every {args.snapshot_every} "
          "batches, amortised)\n")
    print("| B | old | new | new with snapshots | new / old |")
    print("|---|---|---|---|---|")
    for b, old_b, new_b, amortised in rows:
        print(f"| {b} | {old_b / 1e6:,.1f} MB | {new_b / 1e3:,.1f} kB | {amortised / 1e6:,.2f} MB | "
              f"{amortised / old_b:.4%} |")
    old_v, new_v = grid_volume(d, args.d_out, snapshot, args.snapshot_every)
    print(f"\nThe paper's sequential grid writes {old_v / 1e12:.2f} TB (old) and {new_v / 1e9:.2f} GB (new), "
          f"{new_v / old_v:.4%} of it.")
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
