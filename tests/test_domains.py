"""Each setting's domain is declared once (settings.py, `domains.Domain`) and every entry point
enforces that one declaration: the config and its schema, algorithm variants, the Editor's and
`editscale.downstream`'s keywords, and the command line's flags. The out-of-domain values below are
generated from the declarations, so a new declared setting is fuzzed without a new test."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import editscale
from editscale import algorithms, domains, settings
from editscale.algorithms import ALGORITHMS
from editscale.settings import ConfigError, Settings

REPO = Path(__file__).resolve().parents[1]


def declared():
    """(config section, its class, field name, domain) of every setting that declares a domain."""
    for section in dataclasses.fields(Settings):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            if f.metadata.get("domain") is not None:
                yield section.name, cls, f.name, f.metadata["domain"]


def outside(domain: domains.Domain) -> list:
    """Values outside `domain`: past each bound, of another type, not finite, not a choice."""
    if domain.choices:
        return ["no-such-choice", 3, None]
    if domain.kind == "boolean":
        return ["yes", 1]
    values = ["3", True, None]
    if domain.kind == "number":
        values += [math.nan, math.inf, -math.inf]
    else:
        values += [2.5, math.nan]
    for low in (domain.minimum, domain.exclusive_minimum):
        if low is not None:
            values.append(low if low == domain.exclusive_minimum else low - 1)
    if domain.maximum is not None:
        values.append(domain.maximum + 1)
    return values


DECLARED = list(declared())


def test_settings_declare_domains_and_the_defaults_lie_inside_them():
    assert {(s, name) for s, _, name, _ in DECLARED} >= {("edit", "nullspace_threshold"), ("edit", "emmet_lambda"),
                                                        ("edit", "mom2_update_weight"), ("downstream", "n_tests"),
                                                        ("downstream", "shots"), ("downstream", "gen_len")}
    for section, cls, name, domain in DECLARED:
        assert domain.holds(getattr(cls(), name)), (section, name)
        assert all(not domain.holds(v) for v in outside(domain)), (section, name)


def test_the_schema_states_every_declared_domain_and_no_other_bound():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for section, _, name, domain in DECLARED:
        prop = schema["properties"][section]["properties"][name]
        want = domain.schema()
        assert {k: prop.get(k) for k in want} == want, (section, name, prop)
        extra = {"minimum", "exclusiveMinimum", "maximum", "enum"} & set(prop) - set(want)
        assert not extra, (section, name, extra)


@pytest.mark.parametrize("section,cls,name,domain", DECLARED, ids=[f"{d[0]}.{d[2]}" for d in DECLARED])
def test_every_out_of_domain_value_is_refused_by_the_config(section, cls, name, domain):
    for value in outside(domain):
        with pytest.raises(ConfigError, match=rf"{section}\.{name} = .* is not {domain.describe()}"):
            settings.parse({section: {name: value}})


def test_every_out_of_domain_number_is_refused_in_an_algorithm_variant():
    for section, cls, name, domain in DECLARED:
        if section != "edit" or domain.kind != "number":
            continue
        for algorithm in (a for a in ALGORITHMS.values() if name in a.settings):
            for value in (v for v in outside(domain) if isinstance(v, (int, float)) and not isinstance(v, bool)):
                spelt = algorithms.variant_name(algorithm.name, {name: value})
                with pytest.raises(ConfigError, match=rf"algorithm variant '{spelt}': {name} = .* is not "
                                                      rf"{domain.describe()}"):
                    settings.check(settings.parse({"batch": {"algorithms": [spelt]}}), algorithms=ALGORITHMS,
                                   variant=algorithms.variant)


def test_every_out_of_domain_value_is_refused_by_the_editor_keywords(tiny_llama_dir):
    model, tok, layout = editscale.models.load(str(tiny_llama_dir))
    keywords = {"edit": "edit", "values": "value_settings", "templates": "templates", "stats": "stats_settings"}
    tried = 0
    for section, cls, name, domain in DECLARED:
        if section not in keywords:
            continue
        for value in outside(domain):
            given = dataclasses.replace(cls(), **{name: value})
            with pytest.raises(ValueError, match=rf"{keywords[section]}\.{name} = .* is not {domain.describe()}"):
                editscale.Editor(model, tok, layout, layers=[1], progress=False, **{keywords[section]: given})
            tried += 1
    assert tried


def test_every_out_of_domain_value_is_refused_by_the_downstream_keywords(tiny_llama_dir):
    from editscale.evaluation.downstream import DownstreamError

    model, tok, layout = editscale.models.load(str(tiny_llama_dir))
    for section, cls, name, domain in DECLARED:
        if section != "downstream":
            continue
        for value in outside(domain):
            if name == "n_tests" and value is None:
                continue  # None: every test item
            with pytest.raises(DownstreamError, match=rf"{name}={value!r} is not"):
                editscale.downstream(model, tok, ["sst2"], layout=layout, **{name: value})
    context = editscale.models.context_length(model)  # inside its domain, but beyond this model: gen_len's fault
    with pytest.raises(DownstreamError, match=rf"gen_len={context} leaves no room .* context of {context} tokens"):
        editscale.downstream(model, tok, ["sst2"], layout=layout, method="generate", gen_len=context)


def test_the_command_line_flags_use_the_same_domains(tmp_path):
    for flag, value, domain in (("--n-tests", "-3", domains.of(settings.Downstream, "n_tests")),
                                ("--shots", "11", domains.of(settings.Downstream, "shots")),
                                ("--gen-len", "0", domains.of(settings.Downstream, "gen_len"))):
        done = subprocess.run([sys.executable, "-m", "editscale", "downstream", "./no-model-needed", flag, value],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and f"{flag} {value} is not {domain.describe()}" in done.stderr, done.stderr
