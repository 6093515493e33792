"""editscale's command line: edit facts into a model, and ask a model (edited or not) a prompt.

    python -m editscale edit --model smollm2-135m --facts facts.jsonl --algorithm memit --layers 3 --out edited/
    python -m editscale edit ... --out edited/ --export      # also the edited model, for from_pretrained
    python -m editscale ask edited/ "Danielle Darrieux is a citizen of"
    python -m editscale ask smollm2-135m "Danielle Darrieux is a citizen of" --edit edited/edit.safetensors
    python -m editscale evaluate smollm2-135m --facts facts.jsonl --edit edited/edit.safetensors
    python -m editscale stats compute --model smollm2-135m --layers 3 4 --tokens 400000   # C, once
    python -m editscale stats export --model smollm2-135m --layers 3 --tokens 400000 --to shared-C/
    python -m editscale stats import shared-C/*.safetensors --model smollm2-135m          # on another machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FACTS_HELP = """a JSON Lines file, one fact a line: {"prompt": "{} is a citizen of", "subject": "Danielle Darrieux",
"target_new": "Japan"}; the prompt holds "{}" where the subject goes, or the subject itself"""


class UserError(Exception):
    """A mistake in the command line or what it names: printed as one line, exit code 2."""


def read_facts(path) -> list[dict]:
    if not Path(path).is_file():
        raise UserError(f"--facts {path}: no such file; {FACTS_HELP}")
    facts = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # UTF-8, with or without a byte-order mark
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    facts.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}, line {number}: not JSON ({err.msg}); one fact a line, e.g. {FACTS_HELP}")
    except UnicodeDecodeError as err:
        raw = Path(path).read_bytes()[:2]
        guess = " (it starts like UTF-16)" if raw in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(f"--facts {path}: not UTF-8 text{guess}, byte {err.start} cannot be read; save it as "
                        f"UTF-8 JSON Lines") from None
    if not facts:
        raise UserError(f"{path} holds no facts; {FACTS_HELP}")
    return facts


def check_facts(facts: list, path) -> list[dict]:
    """The facts as `Editor.edit` checks them before it needs a model, before any model is loaded."""
    from editscale.editor import check_facts as checked

    try:
        return checked(facts)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err


def model_spec(spec: str, argument: str) -> str:
    """`spec` if it names an existing folder or file, the embedded model, or a hub id; a path that is
    not there is an error, never sent to the hub."""
    from editscale.models import EMBEDDED

    if spec == EMBEDDED or Path(spec).expanduser().exists():
        return spec
    if spec.startswith(("/", ".", "~")) or spec.endswith(("/", ".gguf")) or spec.count("/") > 1 or "\\" in spec:
        raise UserError(f"{argument} {spec}: no such folder or file here; give a model folder, a .gguf file, "
                        f"{EMBEDDED}, or a hub id such as HuggingFaceTB/SmolLM2-135M")
    return spec


def check_corpus(corpus) -> None:
    if corpus not in (None, "auto") and not corpus.startswith("hf:") and not Path(corpus).is_file():
        raise UserError(f"--corpus {corpus}: no such file; name a .txt or .jsonl file, hf:<dataset>:<config>:"
                        f"<split>, or auto")


def load_model(spec: str, argument: str, device: str, layout: dict | None = None):
    """The model `spec` names on `device` (with a preset's `layout`), or a UserError naming the argument."""
    import torch

    import editscale

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device}: no device torch knows; use cpu, cuda, cuda:N or mps") from None
    spec = model_spec(spec, argument)
    if Path(spec).expanduser().is_dir() and (problems := editscale.models.folder_problems(Path(spec).expanduser())):
        raise UserError(f"{argument} {spec}: not a whole model folder: {'; '.join(problems)}")
    try:
        return editscale.models.load(spec, device=device, layout=layout)
    except OSError as err:  # transformers: not a folder here and no such hub model, or no network
        raise UserError(f"{argument} {spec}: not a model folder here, and the hub gave no model of that id "
                        f"({str(err).splitlines()[0]})") from err


def read_edit(path):
    """The `--edit` file as an Edit (None without one), read before any model loads."""
    import editscale

    if not path:
        return None
    try:
        return editscale.Edit.load(path)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"--edit: {err}") from err


def check_out(args) -> Path:
    """--out before any work: a folder (made if missing) that holds no edit yet, unless --overwrite."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for edit.safetensors")
    written = [out / "edit.safetensors", *([out / "config.json"] if args.export else [])]
    existing = [str(p) for p in written if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f"--out {out} already holds {', '.join(existing)}; name another folder, or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot make the folder ({err.strerror})") from err
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable")
    return out


def preset_of(args):
    """The settings --preset names (or the defaults), with --model filled in from it when not given."""
    from editscale import presets, settings
    from editscale.settings import Model

    if args.preset is not None and args.preset not in presets.PRESETS:
        raise UserError(f"--preset {args.preset}: one of {', '.join(presets.PRESETS)}")
    given = settings.parse({"model": {"preset": args.preset}} if args.preset else {})
    args.model = args.model or (given.model.spec if args.preset else Model.spec)
    return given


def edit(args) -> None:
    import dataclasses

    import editscale

    given = preset_of(args)
    facts = read_facts(args.facts)
    out = check_out(args)
    check_facts(facts, args.facts)
    from editscale import algorithms

    try:
        algorithms.get(args.algorithm)  # an algorithm, or one with add-ons: memit_seq+prune
    except ValueError as err:
        raise UserError(f"--algorithm {args.algorithm}: {err}") from None
    check_corpus(args.corpus)
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results} is a file; name the folder that keeps C (it is made if missing)")
    try:
        editscale.models.slug(model_spec(args.model, "--model"))  # C's cache is results/<its name>
    except ValueError as err:
        raise UserError(f"--model {args.model}: {err}") from None
    model, tok, layout = load_model(args.model, "--model", args.device, given.model.layout)
    try:
        editor = editscale.Editor(model, tok, layout, algorithm=args.algorithm, layers=args.layers,
                                  stats_settings=dataclasses.replace(given.stats, corpus=args.corpus or given.stats.corpus),
                                  results_dir=args.results, preset=args.preset)
    except ValueError as err:
        raise UserError(f"--layers / --algorithm: {err}") from err
    try:
        made = editor.edit(facts)
    except ValueError as err:
        raise UserError(f"{args.facts}: {err}") from err
    made.save(out / "edit.safetensors")
    where = f"layer {editor.layer}" if len(editor.layers) == 1 else f"layers {', '.join(map(str, editor.layers))}"
    print(f"wrote {out / 'edit.safetensors'}: {len(facts)} facts, {args.algorithm} at {where}")
    if args.export:
        made.apply(model)
        editscale.export(model, tok, out)
        print(f"wrote the edited model to {out} (transformers' from_pretrained loads it; editscale.json lists the edits)")


def ask(args) -> None:
    import torch


    if args.tokens < 1:
        raise UserError(f"--tokens {args.tokens}: generate at least 1 token")
    edit = read_edit(args.edit)  # a bad edit file stops before the model loads
    model, tok, _ = load_model(args.model, "model", args.device)
    if edit is not None:
        try:
            edit.apply(model)
        except ValueError as err:
            raise UserError(f"--edit {args.edit}: {err}") from err
    inputs = tok(args.prompt, return_tensors="pt").to(args.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    print(args.prompt + tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


EVALUATE_HELP = """a JSON Lines file, one fact a line, with the answers it is judged on: {"prompt": "{} is a citizen
of", "subject": "Danielle Darrieux", "target_new": "Japan", "target_true": "France"}, and optionally
"paraphrase_prompts" and "neighborhood_prompts" (lists of filled prompts; neighbours keep target_true)"""


def evaluate(args) -> None:
    """Both protocols side by side, per fact and in total."""
    from editscale.evaluation import facts as scoring

    facts = read_facts(args.facts)
    try:
        scoring.records_of(facts)  # a bad fact stops before the model loads
    except ValueError as err:
        raise UserError(f"{args.facts}: {err}") from err
    edit = read_edit(args.edit)
    model, tok, layout = load_model(args.model, "model", args.device)
    if edit is not None:
        try:
            edit.check(model)
        except ValueError as err:
            raise UserError(f"--edit {args.edit}: {err}") from err
    print(scoring.side_by_side(scoring.evaluate(model, tok, facts, edit=edit, layout=layout, progress=True)))


def check(args) -> None:
    """The downstream check (GLUE subsets and MMLU) of a model, with an edit applied first if given."""
    import editscale
    from editscale import domains
    from editscale.evaluation.downstream import DownstreamError
    from editscale.settings import Downstream

    for flag in ("n_tests", "shots", "gen_len"):  # each flag's domain, as the setting declares it
        try:
            domains.check(f"--{flag.replace('_', '-')}", getattr(args, flag), domains.of(Downstream, flag), joiner=" ")
        except ValueError as err:
            raise UserError(str(err)) from None
    edit = read_edit(args.edit)
    model, tok, layout = load_model(args.model, "model", args.device)
    if edit is not None:
        edit.apply(model)
    try:
        _, summary = editscale.downstream(model, tok, args.tasks, n_tests=args.n_tests, shots=args.shots,
                                          method=args.method, gen_len=args.gen_len, layout=layout)
    except DownstreamError as err:
        raise UserError(str(err)) from err
    print(f"{'task':6} {'metric':9} {'value':>6}  95% CI          chance  above chance")
    for r in summary.itertuples(index=False):
        print(f"{r.task:6} {r.metric:9} {r.value:6.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {r.chance:.2f}    "
              f"{'yes' if r.informative else 'no'}")


def stats_settings(args, given):
    """The C that --tokens, --corpus and --max-length name over `given` (a preset's settings, or the
    defaults), its domains checked."""
    import dataclasses

    from editscale import domains
    from editscale.settings import Stats

    args.tokens = given.stats.max_tokens if args.tokens is None else args.tokens
    max_length = args.max_length or given.stats.max_length
    max_length = max_length if max_length == "auto" else _count(str(max_length), "--max-length")
    try:
        domains.check("--tokens", args.tokens, domains.of(Stats, "max_tokens"), joiner=" ")
    except ValueError as err:
        raise UserError(str(err)) from None
    check_corpus(args.corpus)
    return dataclasses.replace(given.stats, corpus=args.corpus or given.stats.corpus, max_tokens=args.tokens,
                               max_length=max_length)


def _count(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{flag} {text}: give a positive whole number, or auto")
    return int(text)


def stats(args) -> None:
    """C computed into the store, exported from it with its provenance, or imported into it."""
    import editscale
    from editscale.editing import stats as store
    from editscale.settings import Library

    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results} is a file; name the folder that keeps C (it is made if missing)")
    if (args.action == "import") != bool(args.files):
        raise UserError("import takes the exported files (python -m editscale stats import C.safetensors ...); "
                        "compute and export take none, only --layers")
    given = preset_of(args)
    spec = model_spec(args.model, "--model")
    if args.layers is None:
        args.layers = list(given.layer) if args.preset else list(Library.layers)
    if args.action == "import":
        try:
            model, layout = editscale.models.skeleton(spec, given.model.layout)
        except OSError as err:
            raise UserError(f"--model {spec}: no config here or on the hub ({str(err).splitlines()[0]})") from err
        for path in args.files:
            if not Path(path).is_file():
                raise UserError(f"{path}: no such file; name the .safetensors files `stats export` wrote")
            try:
                placed = store.place(path, model, layout, spec, results)
            except ValueError as err:
                raise UserError(f"{path}: {err}") from err
            print(f"{path} -> {placed}")
        return
    wanted = stats_settings(args, given)
    where = {layer: store.stats_path(results, spec, wanted, layer) for layer in args.layers}
    if args.action == "export":
        missing = [str(p) for p in where.values() if not p.exists()]
        if missing:
            raise UserError(f"no C at {', '.join(missing)}; compute it first: python -m editscale stats compute "
                            f"--model {spec} --layers {' '.join(map(str, args.layers))} --tokens {args.tokens}")
        for layer, path in where.items():
            print(f"{path} -> {store.export(path, args.to)}")
        return
    model, tok, layout = load_model(spec, "--model", args.device, given.model.layout)
    bad = [layer for layer in args.layers if not 0 <= layer < layout.n_layers(model)]
    if bad:
        raise UserError(f"--layers {' '.join(map(str, bad))}: {spec} has layers 0-{layout.n_layers(model) - 1}")
    for layer, path in store.cached(model, tok, layout, wanted, results, args.layers, model_name=spec).items():
        print(f"C of layer {layer}: {path}")


def parser() -> argparse.ArgumentParser:
    from editscale.presets import PRESETS
    from editscale.settings import Downstream, Library, Model, Settings, Stats

    top = argparse.ArgumentParser(prog="python -m editscale", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = top.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("edit", help="edit facts into a model; write the edit (and, with --export, the model)",
                         description="Edit facts into a model with one algorithm at one layer. C (the keys' second "
                         "moment) is read from the workflow's cache under --results, or computed there once.")
    e.add_argument("--model", help=f"hub id, local folder, .gguf file, or smollm2-135m (default: the preset's, else "
                   f"{Model.spec})")
    e.add_argument("--preset", help=f"a model's settings in one name: {', '.join(PRESETS)} (its layers, λ, value "
                   f"settings and C; --layers and --corpus override them)")
    e.add_argument("--facts", required=True, help=FACTS_HELP)
    e.add_argument("--algorithm", default=Library.algorithm,
                   help=f"an algorithm of editscale's registry (docs/design.md §2), with add-ons after '+' "
                   f"(memit_seq+prune); a name it does not know lists them (default {Library.algorithm})")
    e.add_argument("--layers", type=int, nargs="+",
                   help=f"the layer to edit (default: the preset's, else {' '.join(map(str, Library.layers))}), or a "
                   f"window: --layers 2 3 4 (MEMIT's spread; not rome)")
    e.add_argument("--out", required=True, help="folder for edit.safetensors (and the model, with --export)")
    e.add_argument("--export", action="store_true", help="also write the edited model to --out")
    e.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    e.add_argument("--corpus", help="text for C: auto (offline Wikipedia articles, else Wikipedia; the default "
                   "but with a preset, which names its own)")
    e.add_argument("--results", default=Settings.results, help="the workflow's results folder, where C is cached")
    e.add_argument("--device", default=Model.device)
    e.add_argument("--debug", action="store_true", help="show the full traceback of an error")
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
    a.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    a.set_defaults(run=ask)
    from editscale.evaluation.downstream import TASKS

    d = verbs.add_parser("downstream", help="a model's general ability: GLUE subsets and MMLU, with CIs",
                         description="Score MODEL (an exported folder, or any model spec, with --edit applied first) "
                         "on the seed authors' downstream sets (shared/data/downstream): accuracy, weighted F1 and "
                         "MCC per task with bootstrap 95%% CIs, and whether it is above chance.")
    d.add_argument("model")
    d.add_argument("--edit", help="an edit.safetensors to apply first")
    d.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="default: all")
    d.add_argument("--n-tests", type=int, default=Downstream.n_tests, help=f"test items a task (default "
                   f"{Downstream.n_tests})")
    d.add_argument("--shots", type=int, default=Downstream.shots, help="few-shot examples (0 to 10)")
    d.add_argument("--method", default=Downstream.method, choices=["forced", "generate"],
                   help="forced: the label word with the lowest NLL (default); generate: the reference's parsed "
                   "greedy answer")
    d.add_argument("--gen-len", type=int, default=Downstream.gen_len, help="tokens generated with --method generate")
    d.add_argument("--device", default=Model.device)
    d.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    d.set_defaults(run=check)
    v = verbs.add_parser("evaluate", help="score facts teacher-forced and by live decoding, side by side",
                         description="Score FACTS on MODEL (an exported folder, or any model spec, with --edit "
                         "applied for the scoring) under both protocols: teacher-forced (ES, PS, NS: the new target "
                         "likelier than the true one) and live (the model's greedy continuation starts with the "
                         "answer; NU: a neighbour's continuation unchanged by the edit). Per fact and in total.")
    v.add_argument("model")
    v.add_argument("--facts", required=True, help=EVALUATE_HELP)
    v.add_argument("--edit", help="an edit.safetensors to apply for the scoring")
    v.add_argument("--device", default=Model.device)
    v.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    v.set_defaults(run=evaluate)
    c = verbs.add_parser("stats", help="compute C once, export it with its provenance, import it elsewhere",
                         description="C, the second moment of the edited projection's keys over a text corpus, is "
                         "what MEMIT-family edits cost most to prepare. compute: C of --layers into the store under "
                         "--results (where the workflow and `edit` look); export: copy it out, with model, layer, "
                         "corpus digest, tokens and max_length in the file; import: check an exported C against "
                         "--model (its name, the layer's shape) and put it in the store.")
    c.add_argument("action", choices=["compute", "export", "import"])
    c.add_argument("files", nargs="*", help="import: the exported .safetensors files")
    c.add_argument("--model", help=f"hub id, local folder, .gguf file, or {Model.spec} (default: the preset's, else "
                   f"{Model.spec})")
    c.add_argument("--preset", help=f"a model's settings in one name: {', '.join(PRESETS)} (its model, layers and C "
                   f"settings; each flag overrides)")
    c.add_argument("--layers", type=int, nargs="+", help=f"compute, export: the layers (default: the preset's, else "
                   f"{' '.join(map(str, Library.layers))})")
    c.add_argument("--tokens", type=int, help=f"corpus tokens C sums (default: the preset's, else {Stats.max_tokens})")
    c.add_argument("--corpus", help="text for C: auto (offline Wikipedia articles, else Wikipedia; the default but "
                   "with a preset)")
    c.add_argument("--max-length", help="tokens a text is cut to: auto (the model's context; the default but with a "
                   "preset) or a number")
    c.add_argument("--results", default=Settings.results, help="the workflow's results folder, where C is kept")
    c.add_argument("--to", default=".", help="export: the folder to write to")
    c.add_argument("--device", default=Model.device)
    c.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    c.set_defaults(run=stats)
    return top


def main(argv=None) -> None:
    """Run a verb. A user's error (a bad argument, file, fact or model) is one line on stderr and exit
    code 2, as argparse's own; `--debug` shows the traceback instead."""
    from editscale.artifacts import UnreadableArtifact
    from editscale.data.records import RecordError

    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, ValueError, FileNotFoundError, RecordError, UnreadableArtifact) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())  # one line
        print(f"python -m editscale {args.verb}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
