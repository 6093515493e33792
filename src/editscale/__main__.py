"""editscale's command line: edit facts into a model, and ask a model (edited or not) a prompt.

    python -m editscale edit --model smollm2-135m --facts facts.jsonl --algorithm memit --layers 3 --out edited/
    python -m editscale edit ... --out edited/ --export      # also the edited model, for from_pretrained
    python -m editscale ask edited/ "Danielle Darrieux is a citizen of"
    python -m editscale ask smollm2-135m "Danielle Darrieux is a citizen of" --edit edited/edit.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FACTS_HELP = """a JSON Lines file, one fact a line: {"prompt": "{} is a citizen of", "subject": "Danielle Darrieux",
"target_new": "Japan"}; the prompt holds "{}" where the subject goes, or the subject itself"""


def read_facts(path) -> list[dict]:
    facts = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                facts.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}, line {number}: not JSON ({err.msg}); one fact a line, e.g. {FACTS_HELP}")
    if not facts:
        raise SystemExit(f"{path} holds no facts; {FACTS_HELP}")
    return facts


def edit(args) -> None:
    import editscale
    from editscale.settings import Stats

    facts = read_facts(args.facts)
    model, tok, layout = editscale.models.load(args.model, device=args.device)
    editor = editscale.Editor(model, tok, layout, algorithm=args.algorithm, layers=args.layers,
                              stats_settings=Stats(corpus=args.corpus), results_dir=args.results)
    out = Path(args.out)
    try:
        made = editor.edit(facts)
    except ValueError as err:
        raise SystemExit(f"{args.facts}: {err}")
    out.mkdir(parents=True, exist_ok=True)
    made.save(out / "edit.safetensors")
    where = f"layer {editor.layer}" if len(editor.layers) == 1 else f"layers {', '.join(map(str, editor.layers))}"
    print(f"wrote {out / 'edit.safetensors'}: {len(facts)} facts, {args.algorithm} at {where}")
    if args.export:
        made.apply(model)
        editscale.export(model, tok, out)
        print(f"wrote the edited model to {out} (transformers' from_pretrained loads it; editscale.json lists the edits)")


def ask(args) -> None:
    import torch

    import editscale

    model, tok, _ = editscale.models.load(args.model, device=args.device)
    if args.edit:
        editscale.Edit.load(args.edit).apply(model)
    inputs = tok(args.prompt, return_tensors="pt").to(args.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    print(args.prompt + tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


def parser() -> argparse.ArgumentParser:
    from editscale.settings import Library, Model, Settings, Stats

    top = argparse.ArgumentParser(prog="python -m editscale", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = top.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("edit", help="edit facts into a model; write the edit (and, with --export, the model)",
                         description="Edit facts into a model with one algorithm at one layer. C (the keys' second "
                         "moment) is read from the workflow's cache under --results, or computed there once.")
    e.add_argument("--model", default=Model.spec, help=f"hub id, local folder, .gguf file, or smollm2-135m (default "
                   f"{Model.spec})")
    e.add_argument("--facts", required=True, help=FACTS_HELP)
    e.add_argument("--algorithm", default=Library.algorithm,
                   help=f"rome, memit, emmet, alphaedit or encore (default {Library.algorithm})")
    e.add_argument("--layers", type=int, nargs="+", default=list(Library.layers),
                   help=f"the layer to edit (default {' '.join(map(str, Library.layers))}), or a window: --layers 2 3 "
                   f"4 (MEMIT's spread; not rome)")
    e.add_argument("--out", required=True, help="folder for edit.safetensors (and the model, with --export)")
    e.add_argument("--export", action="store_true", help="also write the edited model to --out")
    e.add_argument("--corpus", default=Stats.corpus,
                   help="text for C: auto (offline Wikipedia articles, else Wikipedia)")
    e.add_argument("--results", default=Settings.results, help="the workflow's results folder, where C is cached")
    e.add_argument("--device", default=Model.device)
    e.set_defaults(run=edit)
    a = verbs.add_parser("ask", help="print a model's greedy continuation of a prompt",
                         description="Print the greedy continuation of PROMPT by MODEL (an exported folder, or any "
                         "model spec, with --edit applied first).")
    a.add_argument("model")
    a.add_argument("prompt")
    a.add_argument("--edit", help="an edit.safetensors to apply first")
    a.add_argument("--tokens", type=int, default=Library.ask_tokens,
                   help=f"tokens to generate (default {Library.ask_tokens})")
    a.add_argument("--device", default=Model.device)
    a.set_defaults(run=ask)
    return top


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
