"""The size of editscale's two zsRE departures from the references, on SmolLM2 (docs/fidelity.md, zsRE):

1. Answers that the tokenizer splits inside a multi-byte character: memit re-tokenises
   `prompt + decode(t[:i])`, and a partial character decodes to U+FFFD, so memit scores another
   prompt than the one the model reads; editscale reads the answer's own tokens. Counted over the
   MEND file, and scored both ways on the unedited model for every affected record and kind.
2. Locality's prompt: memit (and editscale) score the MEND neighbourhood as `loc + "?"`, EasyEdit
   as `loc`. After one MEMIT batch of the first `--n` selected records at `--layer`, Locality is read
   both ways.

    PYTHONPATH=src python benchmarks/zsre_fidelity.py --stats results/smollm2-135m/stats/<id>/layer3.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from editscale import models, paths
from editscale.data import zsre
from editscale.evaluation import metrics


def memit_accuracy(model, tok, prompt: str, target: str) -> float:
    """kmeng01/memit's test_batch_prediction_acc for one prompt, literally (as tests/test_zsre.py pins it)."""
    target_tok = tok(" " + target)["input_ids"]
    target_tok = target_tok[1:] if tok.bos_token_id is not None and target_tok[:1] == [tok.bos_token_id] else target_tok
    correct = []
    with torch.no_grad():
        for i in range(len(target_tok)):
            ids = tok(prompt + tok.decode(target_tok[:i]))["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, -1]
            correct.append(int(logits.argmax()) == tok(tok.decode(target_tok[i]))["input_ids"][0])
    return 100 * float(np.mean(correct))


def split_inside_a_character(tok, text: str) -> bool:
    """Some token of " " + text decodes alone to U+FFFD: the tokenizer cut a multi-byte character."""
    ids = tok(" " + text, add_special_tokens=False)["input_ids"]
    return any("\ufffd" in tok.decode([i]) for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stats", help="C of --layer (a workflow stats file); without it part 2 is skipped")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    mend = paths.shared_data() / "zsre" / "zsre_mend_eval_portability_gpt4.json"
    model, tok, layout = models.load(models.EMBEDDED)
    out = {"machine": platform.machine(), "torch": torch.__version__}

    every = zsre.load(mend, unique_subjects=False)
    kinds = {"rewrite": ("prompt", "target_new"), "paraphrase": ("paraphrase_prompts", "paraphrase_answers"),
             "neighborhood": ("neighborhood_prompts", "neighborhood_answers"),
             "portability": ("portability_prompts", "portability_answers")}
    affected = []
    for rec in every.itertuples(index=False):
        for kind, (prompts, answers) in kinds.items():
            pairs = ([(rec.prompt.replace("{}", rec.subject, 1), rec.target_new)] if kind == "rewrite"
                     else list(zip(getattr(rec, prompts), getattr(rec, answers))))
            affected += [(rec.case_id, kind, p, a) for p, a in pairs if split_inside_a_character(tok, a)]
    records = sorted({case for case, *_ in affected})
    scored = metrics.score(model, tok, every[every.case_id.isin(records)], layout=layout)
    ours = {(r.case_id, r.prompt_kind, r.prompt): 100 * r.top1 for r in scored.itertuples(index=False)}
    out["split_answers"] = [{"case_id": int(case), "kind": kind, "answer": answer,
                             "editscale": ours[(case, kind, prompt)],
                             "memit": memit_accuracy(model, tok, prompt, answer)}
                            for case, kind, prompt, answer in affected]
    out["split_records"] = len(records)
    out["records"] = len(every)

    if args.stats:
        import editscale

        chosen = zsre.load(mend, n=args.n)
        facts = chosen[["case_id", "prompt", "subject", "target_new"]].to_dict("records")
        editor = editscale.Editor(model, tok, layout, layers=[args.layer], stats=args.stats, progress=False)
        edit = editor.edit(facts)
        without = chosen.assign(neighborhood_prompts=chosen.neighborhood_prompts.map(
            lambda ps: [p.removesuffix("?") for p in ps]))
        locality = {}
        for name, table in (("loc?", chosen), ("loc", without)):
            unedited = metrics.score(model, tok, table, layout=layout)
            with edit.applied(model):
                edited = metrics.score(model, tok, table, layout=layout)
            cases = metrics.per_case(edited, dataset="zsre", reference=unedited).set_index("case_id")
            locality[name] = cases["Locality"]
        moved = (locality["loc?"] - locality["loc"]).abs()
        out["locality"] = {"n": args.n, "layer": args.layer, "moved": int((moved > 1e-9).sum()),
                           "largest_move": float(moved.max()),
                           "smallest_move": float(moved[moved > 1e-9].min()) if (moved > 1e-9).any() else 0.0,
                           "mean_loc?": float(locality["loc?"].mean()), "mean_loc": float(locality["loc"].mean())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
