"""The package layout is the design (docs/design.md §6): imports only point down the layers."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "editscale"
# What each part may import from the package (besides itself). Leaves import nothing from it.
ALLOWED = {
    "settings": {"domains", "presets"}, "domains": set(), "presets": set(), "digests": set(), "artifacts": {"digests"}, "paths": set(),
    "algorithms": set(),  # pure: tensors in, ΔW out
    "models": {"artifacts", "paths"},
    "data": {"artifacts", "paths", "settings"},  # settings: the one set of defaults
    "editing": {"algorithms", "models", "data", "settings", "artifacts", "paths"},  # data: C's corpus
    "evaluation": {"models", "data", "paths", "settings", "domains"},
    "workflow": {"algorithms", "models", "data", "editing", "evaluation", "settings", "artifacts", "paths"},
    # The library's front door and its command line: the layers below, never the other way, and
    # never the workflow (orchestration stands on the library, not the library on it).
    "editor": {"algorithms", "models", "data", "editing", "evaluation", "settings", "domains", "artifacts", "paths",
               "presets"},
    "__main__": {"editor", "models", "settings", "domains", "data", "artifacts", "algorithms", "evaluation", "editing",
                 "presets"},
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within its own part, unless it climbs out
                if node.level > (2 if len(path.relative_to(PACKAGE).parts) > 1 else 1):
                    found.add(node.module.split(".")[0] if node.module else "?")
                continue
            module = node.module or ""
            if module == "editscale":
                found |= {alias.name for alias in node.names}
            elif module.startswith("editscale."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("editscale.")}
    return found


def test_every_import_points_down_the_layers():
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    assert len(modules) > 20
    wrong = []
    for path in modules:
        part = part_of(path)
        for target in imported_parts(path) - {part}:
            if target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong


def test_every_part_is_a_declared_layer():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    assert parts == set(ALLOWED)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Every module of `package` -> the package's modules it imports, anywhere in its body (local
    imports inside functions included). `from a.b import c` counts as an import of the module a.b.c
    where that is a module, else of a.b; a parent package's __init__ is not counted, since Python
    runs it before any submodule and it can import its own submodules without a loop."""
    root = package.name

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files and target.startswith(root):
                    target = target.rpartition(".")[0]
                if target in files:
                    found.add(target)
        graph[name] = found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected parts of more than one module (Tarjan's algorithm): each a loop."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on_stack.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_loop_inside_or_across_layers():
    """Imports between layers point down (above); inside a layer, local imports included, no module
    may reach itself again (issue 39: job.py once imported the experiments that import it)."""
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was actually read
    assert cycles(graph) == []


def test_the_loop_check_sees_a_loop_made_by_a_local_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub import a\n")  # a package importing its own
    (package / "sub" / "a.py").write_text("from pkg.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from . import c\n")  # local, relative
    (package / "sub" / "c.py").write_text("import pkg.sub.a\n")
    (package / "d.py").write_text("from pkg.sub import a\n")
    assert cycles(import_graph(package)) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c"]]
    (package / "sub" / "c.py").write_text("import os\n")
    assert cycles(import_graph(package)) == []


# Modules allowed past 300 lines, each with its reason; every other module stays under (issue 39).
LONG = {
    "settings.py": "the one set of defaults: every section's dataclass, parsing and the cross-key checks "
                   "that span sections, so a default is read in one place",
    "editing/values.py": "v* as one algorithm: the loss, its batched Adam and the prompt layout it optimises "
                         "over, which split apart would each be half a function",
    "editor.py": "the library's front door: Editor and Edit with their checks and docstrings, read as one page",
    "__main__.py": "the command line's four verbs, each its argparse declaration beside the few lines it runs, "
                   "and the one error path they share",
}


def test_no_module_is_over_300_lines_without_a_stated_reason():
    lengths = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name for name, n in lengths.items() if n > 300}
    assert long <= set(LONG), f"over 300 lines with no reason in LONG: {sorted(long - set(LONG))}"
    assert set(LONG) <= long, f"no longer over 300 lines, drop from LONG: {sorted(set(LONG) - long)}"


# --- Experiments are declared once: in editscale.workflow.experiments.EXPERIMENTS. ---------------
REPO = PACKAGE.parents[1]


def test_the_library_front_never_imports_the_workflow():
    front = [PACKAGE / "editor.py", PACKAGE / "__main__.py"]
    assert all("workflow" not in imported_parts(path) for path in front)


def _bracketed_strings(text: str) -> list[set]:
    """The plain strings inside each bracketed literal ([...], (...), {...}) of Python or Snakemake
    source, one set per bracket (the tokenizer reads both)."""
    import io
    import tokenize

    groups, stack = [], []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.OP and token.string in "([{":
            stack.append(set())
        elif token.type == tokenize.OP and token.string in ")]}" and stack:
            groups.append(stack.pop())
        elif token.type == tokenize.STRING and stack and token.string[:1] in "\"'":
            stack[-1].add(token.string.strip("\"'"))
    return groups


def test_experiments_are_declared_once():
    """No module or rule file outside the registry lists the experiments' figures, summary kinds or
    claims: they are derived from EXPERIMENTS (two names of one kind in one literal is a list)."""
    from editscale.workflow import experiments

    kinds = set(experiments.summary_groups()) | set(experiments.collected_sources())
    names = {"figures": set(experiments.figures()), "summary kinds": kinds - {"baseline"},
             "experiments": set(experiments.EXPERIMENTS)}
    registry = PACKAGE / "workflow" / "experiments"
    sources = [p for p in PACKAGE.rglob("*.py") if registry not in p.parents]
    sources += [REPO / "workflow" / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    listed = []
    for path in sources:
        for literal in _bracketed_strings(path.read_text()):
            for what, declared in names.items():
                if len(literal & declared) >= 2:
                    listed.append(f"{path.relative_to(REPO)} lists {what} {sorted(literal & declared)}")
    assert not listed, listed


REGISTRIES = [PACKAGE / "algorithms" / "registry.py", PACKAGE / "workflow" / "experiments"]
# Not an experiment: the library's lazy attribute `editscale.downstream` (the downstream check).
NOT_AN_EXPERIMENT = {(PACKAGE / "__init__.py", "downstream")}


def compared_names(path: Path, names: set) -> list[str]:
    """Where `path` compares a value with one of `names` (==, !=, in, <= ... against a literal name or
    a literal collection holding one): a branch on what a thing is called, where a property is meant."""
    if path.suffix != ".py":  # a rule file: a name beside a comparison operator
        import io
        import tokenize

        tokens = [tok for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
                  if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT)]
        found = []
        for before, token, after in zip(tokens, tokens[1:], tokens[2:]):
            if token.string in ("==", "!=", "in") and {before.string.strip("\"'"), after.string.strip("\"'")} & names:
                found.append(f"{path.relative_to(REPO)}:{token.start[0]}")
        return found
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        literals = set()
        for side in (node.left, *node.comparators):
            items = side.elts if isinstance(side, (ast.Set, ast.Tuple, ast.List)) else [side]
            literals |= {item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)}
        hit = {name for name in literals & names if (path, name) not in NOT_AN_EXPERIMENT}
        if hit:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} compares with {sorted(hit)}")
    return found


def test_no_module_outside_a_registry_branches_on_an_experiments_or_algorithms_name():
    """What an algorithm is (it takes a window, keeps earlier keys) and what an experiment does (its runs
    span the layers, it starts from the unedited model) are fields of their entries; only the
    registries that declare them compare names (issue 39)."""
    from editscale import algorithms
    from editscale.workflow import experiments

    names = set(algorithms.ALGORITHMS) | set(experiments.EXPERIMENTS)
    sources = [p for p in PACKAGE.rglob("*.py") if not any(r == p or r in p.parents for r in REGISTRIES)]
    sources += [REPO / "workflow" / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    found = [where for path in sources for where in compared_names(path, names)]
    assert not found, found


def test_the_name_check_sees_a_comparison(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(a, w):\n    x = [a]\n    return a != 'rome' or {'x', 'sweep'} <= set(w)\n")
    rule = tmp_path / "r.smk"
    rule.write_text('rule r:\n    input: lambda w: [] if w.kind == "batch" else [w.kind]\n')
    global REPO
    repo, REPO = REPO, tmp_path
    try:
        assert [w.split(" ")[0] for w in compared_names(module, {"rome", "sweep", "batch"})] == ["m.py:3", "m.py:3"]
        assert compared_names(rule, {"rome", "sweep", "batch"}) == ["r.smk:2"]
        assert compared_names(module, {"memit"}) == []
    finally:
        REPO = repo


def test_every_experiment_has_a_figure_a_caption_a_summary_and_a_rule():
    from editscale.workflow import experiments

    kinds = set(experiments.summary_groups())
    snakefile = (REPO / "workflow" / "Snakefile").read_text()
    letters = [letter for e in experiments.EXPERIMENTS.values() for letter in e.claims]
    assert len(letters) == len(set(letters))  # a claim belongs to one experiment
    for name, entry in experiments.EXPERIMENTS.items():
        assert entry.figures, name
        for figure in entry.figures:
            assert (REPO / "workflow" / "report" / f"{figure}.rst").read_text().strip(), figure
        assert set(entry.summaries) | set(entry.reads), name
        assert set(entry.reads) <= kinds, name
        if entry.stage is not None:
            assert f'include: "rules/{name}.smk"' in snakefile, f"workflow/Snakefile does not include {name}'s rules"
            rule = (REPO / "workflow" / "rules" / f"{name}.smk").read_text()
            assert f"rule {name}:" in rule and f'experiment_outputs("{name}")' in rule, name
            assert {output for output, _ in entry.summaries.values()} <= set(entry.outputs), name
            assert set(entry.collected.values()) <= set(entry.outputs), name
