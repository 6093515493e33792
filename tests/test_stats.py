"""Text sources and the key second moment C on tiny random models, against brute force."""

import re

import pytest
import torch
from conftest import SHARED

from editscale.data import corpus
from editscale.editing import covariance
from editscale.editing.covariance import load_stats, second_moments, write_stats

TEXTS = [
    "The mother tongue of Danielle Darrieux is French.",
    "",  # read, but contributes no tokens
    "Paris is the capital of France. Angola is located in Africa, and Toyota is owned by a company in Japan.",
    "I think you said that.",
    "Therefore the man, because of the rain, stayed at home.",
    "The Eiffel Tower is in Paris, and Paris is in France. The Eiffel Tower is in Paris, and Paris is in France.",
    "Angola.",
    "You said that the capital of France is Paris; I think so too, because of the tower.",
    "Toyota is owned by a company in Japan.",
    "Because of the rain the man stayed at home, and the tower is in Paris.",
    "The capital of Japan is Tokyo.",
    "I said that you think the man is French, because he is from Paris.",
]
MAX_LENGTH = 16  # several texts are longer, so truncation is exercised too


def reference_keys(model, tokenizer, layout, layer, texts, skip_first=False):
    """Every token's key, in text order, from a plain full forward of each text alone (no padding):
    each text one sequence, truncated at MAX_LENGTH, as the reference's layer_stats feeds it."""
    found = []
    handle = layout.edited_module(model, layer).register_forward_pre_hook(lambda _m, args: found.append(args[0][0]))
    try:
        with torch.no_grad():
            for text in texts:
                if text:
                    ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"]
                    model(input_ids=ids)
                    if skip_first:
                        found[-1] = found[-1][1:]
    finally:
        handle.remove()
    return torch.cat(found).double()


def assert_relative(a, b, tol):
    a, b = a.double(), b.double()
    assert (a - b).norm() <= tol * b.norm(), f"relative error {((a - b).norm() / b.norm()).item():.2e} > {tol}"


# --- corpus ---------------------------------------------------------------------------


@pytest.mark.skipif(SHARED is None, reason="no offline data folder")
def test_wikipedia_articles_are_the_documents():
    docs = list(corpus.iter_texts(SHARED / "corpus" / "wikipedia-articles.txt"))
    assert len(docs) == 2349
    assert docs[0].startswith("2007 European Parliament election in Romania")
    assert all(d and "<doc " not in d and "</doc>" not in d for d in docs)


@pytest.mark.skipif(SHARED is None, reason="no offline data folder")
def test_wikitext_paragraphs_drop_headings():
    paragraphs = list(corpus.iter_texts(SHARED / "corpus" / "wikitext-2-raw-test.txt"))
    assert len(paragraphs) > 2000
    assert paragraphs[0].startswith("Robert Boulter is an English film")
    assert all(p == p.strip() and p for p in paragraphs)
    assert not any(re.fullmatch(r"(=+) .* \1", p) for p in paragraphs)
    assert len(list(corpus.iter_texts(SHARED / "corpus" / "wikitext-2-raw-test.txt", max_samples=7))) == 7


def test_txt_formats(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("First paragraph,\nwrapped.\n\n\n  Second one.  \n\n")
    assert list(corpus.iter_texts(plain)) == ["First paragraph,\nwrapped.", "Second one."]
    docs = tmp_path / "docs.txt"
    docs.write_text('preamble\n<doc id="1" title="A">\nA\n\nAlpha text.\n</doc>\n<doc id="2">\nBeta.\n')
    assert list(corpus.iter_texts(docs)) == ["A\n\nAlpha text.", "Beta."]


def test_jsonl_reads_text_and_names_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": " one "}\n\n{"text": "two", "id": 2}\n')
    assert list(corpus.iter_texts(good)) == ["one", "two"]
    for bad_line in ('{"body": "no text field"}', "not json"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "one"}\n{"text": "two"}\n' + bad_line + "\n")
        with pytest.raises(ValueError, match=r"bad\.jsonl line 3"):
            list(corpus.iter_texts(bad))


def test_missing_source_and_fingerprints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        corpus.iter_texts(tmp_path / "nowhere.txt")
    path = tmp_path / "a.txt"
    path.write_text("alpha")
    first = corpus.fingerprint(path)
    path.write_text("beta")
    assert len(first) == 16 and corpus.fingerprint(path) != first
    spec = {"hf": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "field": "text"}
    assert corpus.fingerprint(spec) == corpus.fingerprint("hf:wikimedia/wikipedia:20231101.en:train") \
        == "hf:wikimedia/wikipedia:20231101.en:train"
    pinned = "hf:wikimedia/wikipedia:20231101.en:train@b04c8d1"
    assert corpus.fingerprint(pinned) == pinned == corpus.fingerprint({**spec, "revision": "b04c8d1"})
    assert corpus._dataset_spec(pinned)["revision"] == "b04c8d1"


# --- second moments -------------------------------------------------------------------


def test_matches_brute_force_for_two_layers_in_one_pass(tiny):
    model, tok, layout = tiny
    moments = second_moments(model, tok, layout, [2, 0], TEXTS, batch_tokens=40, window=5, max_length=MAX_LENGTH, progress=False)
    assert sorted(moments) == [0, 2]
    for layer in (0, 2):
        K = reference_keys(model, tok, layout, layer, TEXTS)
        assert moments[layer].count == len(K)
        assert moments[layer].sum.dtype == torch.float32
        assert moments[layer].module == layout.module_name(layer)
        assert_relative(moments[layer].mean(), K.T @ K / len(K), 1e-5)


def test_stops_after_the_deepest_layer(tiny):
    model, tok, layout = tiny
    calls = []
    handle = layout.block(model, 2).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        stopped = second_moments(model, tok, layout, [0, 1], TEXTS, batch_tokens=40, window=5, max_length=MAX_LENGTH,
                                 progress=False)
        assert calls == []
        full = second_moments(model, tok, layout, [0, 1, 2], TEXTS, batch_tokens=40, window=5, max_length=MAX_LENGTH,
                              progress=False)
        assert calls  # the counter does see block 2 when it is asked for
    finally:
        handle.remove()
    for layer in (0, 1):
        assert stopped[layer].count == full[layer].count
        assert_relative(stopped[layer].mean(), full[layer].mean(), 1e-6)


def test_token_budget_is_exact_and_samples_are_bounded(tiny):
    model, tok, layout = tiny
    K = reference_keys(model, tok, layout, 1, TEXTS)
    budgeted = second_moments(model, tok, layout, [1], TEXTS, max_tokens=37, batch_tokens=20, window=2, max_length=MAX_LENGTH,
                              progress=False)[1]
    assert budgeted.count == 37  # cut inside a text and inside a batch
    assert_relative(budgeted.mean(), K[:37].T @ K[:37] / 37, 1e-5)
    # Three texts read, one of them empty: the tokens of texts 0 and 2.
    sampled = second_moments(model, tok, layout, [1], TEXTS, max_samples=3, batch_tokens=20, window=2, max_length=MAX_LENGTH,
                             progress=False)[1]
    assert sampled.count == len(reference_keys(model, tok, layout, 1, TEXTS[:3]))
    everything = second_moments(model, tok, layout, [1], TEXTS, max_tokens=10**6, window=5,
                                max_length=MAX_LENGTH, progress=False)[1]
    assert everything.count == len(K)


def interrupted(texts, after):
    """The texts, failing like a killed job once `after` of them have been read."""
    for i, text in enumerate(texts):
        if i == after:
            raise KeyboardInterrupt("simulated interruption")
        yield text


def test_resume_after_interruption_equals_uninterrupted(tiny, tmp_path):
    model, tok, layout = tiny
    kwargs = dict(window=2, batch_tokens=20, max_length=MAX_LENGTH, checkpoint_every=1, source_id="corpus-v1",
                  progress=False)
    whole = second_moments(model, tok, layout, [0, 2], TEXTS, **kwargs)
    checkpoint = tmp_path / "partial.safetensors"
    with pytest.raises(KeyboardInterrupt):
        second_moments(model, tok, layout, [0, 2], interrupted(TEXTS, 7), checkpoint=checkpoint, **kwargs)
    assert checkpoint.is_file()
    # The texts already summed come from the checkpoint: replacing them changes nothing.
    replaced = ["Unrelated words that were never summed."] * 6 + TEXTS[6:]
    resumed = second_moments(model, tok, layout, [0, 2], replaced, checkpoint=checkpoint, **kwargs)
    for layer in (0, 2):
        assert resumed[layer].count == whole[layer].count
        assert_relative(resumed[layer].mean(), whole[layer].mean(), 1e-6)
    assert not checkpoint.exists()


def test_the_partial_sums_are_named_by_everything_c_depends_on(tmp_path):
    """`stats.identity` names the folder the partial sums resume from: every field of `Stats`, the
    corpus's content, the layers and the model change it. A new `Stats` field fails here until it is
    given another value below (and so until `stats_id` or `identity` is seen to name it)."""
    from dataclasses import fields, replace

    from editscale.editing import stats as store
    from editscale.settings import Stats

    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("One text.\n\nAnother.\n")
    base = Stats(corpus=str(corpus_file))
    other = {"corpus": str(tmp_path / "other.txt"), "max_tokens": base.max_tokens + 1, "max_length": 64,
             "skip_first_token": True, "batch_tokens": base.batch_tokens + 1}
    assert set(other) == {f.name for f in fields(Stats)}, "a Stats field without another value here"
    (tmp_path / "other.txt").write_text("One text.\n\nAnother, other.\n")
    first = store.identity(base, "tiny", [0, 2])
    assert store.identity(base, "tiny", [2, 0]) == first  # the same sums
    changed = {name: store.identity(replace(base, **{name: value}), "tiny", [0, 2]) for name, value in other.items()}
    changed["layers"] = store.identity(base, "tiny", [0, 1])
    changed["model"] = store.identity(base, "other", [0, 2])
    corpus_file.write_text("One text, edited.\n\nAnother.\n")
    changed["content"] = store.identity(base, "tiny", [0, 2])
    assert all(value != first for value in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_a_changed_setting_never_resumes_partial_sums(tiny, tmp_path, monkeypatch, caplog):
    """C's partial sums of other settings beside the same output are removed, never mixed in: the
    run ends with a clean run's bits."""
    from functools import partial

    from editscale.editing import stats as store
    from editscale.settings import Stats

    model, tok, layout = tiny
    source = tmp_path / "corpus.txt"
    source.write_text("\n\n".join(t for t in TEXTS if t) + "\n")
    monkeypatch.setattr(covariance, "second_moments", partial(covariance.second_moments, checkpoint_every=1, window=2))
    old, new = (Stats(corpus=str(source), max_tokens=tokens, max_length=MAX_LENGTH, batch_tokens=20)
                for tokens in (150, 120))
    out = {0: tmp_path / "store" / "layer0.safetensors", 2: tmp_path / "store" / "layer2.safetensors"}
    texts = corpus.iter_texts
    monkeypatch.setattr(corpus, "iter_texts", lambda s: interrupted(texts(s), 7))
    with pytest.raises(KeyboardInterrupt):
        store.compute(model, tok, layout, old, out, model_name="tiny", progress=False)
    assert list((tmp_path / "store").glob(".layer0.*.parts/sums.safetensors")), "no partial sums to resume"
    monkeypatch.setattr(corpus, "iter_texts", texts)
    clean = {layer: tmp_path / "clean" / path.name for layer, path in out.items()}
    store.compute(model, tok, layout, new, clean, model_name="tiny", progress=False)
    with caplog.at_level("INFO", logger="editscale"):
        store.compute(model, tok, layout, new, out, model_name="tiny", progress=False)
    assert "removing" in caplog.text and "resuming" not in caplog.text
    assert not list((tmp_path / "store").glob(".*.parts"))
    for layer in out:
        assert torch.equal(load_stats(out[layer])[0], load_stats(clean[layer])[0])


def test_first_token_can_be_left_out(tiny):
    model, tok, layout = tiny
    kept = second_moments(model, tok, layout, [1], TEXTS, max_length=MAX_LENGTH, progress=False)[1]
    skipped = second_moments(model, tok, layout, [1], TEXTS, max_length=MAX_LENGTH, skip_first_token=True,
                             progress=False)[1]
    K = reference_keys(model, tok, layout, 1, TEXTS, skip_first=True)
    assert skipped.count == len(K) == kept.count - sum(1 for t in TEXTS if t)
    assert_relative(skipped.mean(), K.T @ K / len(K), 1e-5)
    budget = second_moments(model, tok, layout, [1], TEXTS, max_length=MAX_LENGTH, skip_first_token=True,
                            max_tokens=30, progress=False)[1]
    assert budget.count == 30  # the budget counts summed tokens
    assert_relative(budget.mean(), K[:30].T @ K[:30] / 30, 1e-5)


def test_batching_changes_only_the_order_of_the_sums(tiny):
    """Texts are never cut into several sequences, so batching cannot change which keys are summed."""
    model, tok, layout = tiny
    runs = [second_moments(model, tok, layout, [1], TEXTS, max_length=MAX_LENGTH, batch_tokens=b, window=w,
                           max_tokens=90, progress=False)[1] for b, w in ((1, 1), (16, 3), (10**6, 100))]
    assert len({r.count for r in runs}) == 1
    for run in runs[1:]:
        assert_relative(run.mean(), runs[0].mean(), 1e-6)


def test_length_batches_follow_the_reference_collation():
    sequences = [[1] * n for n in (3, 9, 5, 2, 9, 1)]
    batches = covariance._length_batches(sequences, batch_tokens=18)
    assert [[len(s) for s in b] for b in batches] == [[9, 9], [5, 3, 2], [1]]
    assert [len(b) for b in covariance._length_batches([[1] * 30, [1] * 2], batch_tokens=10)] == [1, 1]


def test_write_and_load_stats_round_trip(tiny, tmp_path):
    model, tok, layout = tiny
    moments = second_moments(model, tok, layout, [0, 1], TEXTS, batch_tokens=40, window=5, max_length=MAX_LENGTH, progress=False)
    paths = write_stats(moments, tmp_path / "stats", model_name="tiny", source_id="abc123", dtype=torch.float32,
                        max_length=MAX_LENGTH, skip_first_token=False)
    assert paths[1] == tmp_path / "stats" / "layer1.safetensors"
    for layer, path in paths.items():
        C, meta = load_stats(path)
        assert C.dtype == torch.float32 and torch.equal(C, moments[layer].mean())
        assert meta == {"model": "tiny", "layer": layer, "module": layout.module_name(layer), "source": "abc123",
                        "tokens": moments[layer].count, "dtype": "float32", "max_length": MAX_LENGTH,
                        "skip_first_token": False}
    explicit = write_stats({0: moments[0]}, {0: tmp_path / "c0.safetensors"}, model_name="tiny", source_id="x",
                           dtype="bfloat16", max_length=8, skip_first_token=True)
    assert load_stats(explicit[0])[1]["dtype"] == "bfloat16" and load_stats(explicit[0])[1]["skip_first_token"]
    assert covariance.SecondMoment(0, "m", torch.eye(2) * 4, 2).mean().equal(torch.eye(2) * 2)


def test_a_corpus_with_no_tokens_stops_before_any_c_is_written(tiny, tmp_path):
    model, tok, layout = tiny[:3]
    with pytest.raises(ValueError, match="gave no tokens to sum: C would be undefined.*stats.corpus"):
        second_moments(model, tok, layout, [1], ["", "  "], max_length=32, source_id="empty.txt", progress=False)


def test_c_is_computed_once_exported_and_imported_elsewhere_with_its_provenance_checked(tiny_llama_dir,
                                                                                         tiny_gpt2_dir, tmp_path):
    """`stats compute` fills the store; `export` copies C out with its provenance; `import` on another
    results folder puts the same bits where the store looks, and refuses another model's C, a C of
    another shape, an altered file, and an unknown model; nothing is overwritten."""
    import subprocess
    import sys

    from editscale import artifacts
    from editscale.editing import stats as store
    from editscale.settings import Stats

    if SHARED is None:
        pytest.skip("C comes from the offline corpus")
    run = lambda *a: subprocess.run([sys.executable, "-m", "editscale", "stats", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, timeout=600)
    model = str(tiny_llama_dir)
    done = run("compute", "--model", model, "--layers", "0", "2", "--tokens", "300", "--results", "here")
    assert done.returncode == 0, done.stderr
    made = store.stats_path(tmp_path / "here", model, Stats(max_tokens=300), 2)
    assert made.exists() and f"C of layer 2: {made.relative_to(tmp_path)}" in done.stdout
    done = run("export", "--model", model, "--layers", "2", "--tokens", "300", "--results", "here", "--to", "out")
    assert done.returncode == 0, done.stderr
    (exported,) = (tmp_path / "out").glob("*.safetensors")
    meta = artifacts.read_metadata(exported)
    assert {k: meta[k] for k in ("model", "layer", "tokens", "stats_id")} == {
        "model": model, "layer": "2", "tokens": "300", "stats_id": made.parent.name}
    assert meta["source"] and meta["max_length"] and meta["module"] == "model.layers.2.mlp.down_proj"

    done = run("import", str(exported), "--model", model, "--results", "there")
    assert done.returncode == 0, done.stderr
    placed = store.stats_path(tmp_path / "there", model, Stats(max_tokens=300), 2)
    assert torch.equal(artifacts.read_tensors(placed)["C"], artifacts.read_tensors(made)["C"])
    assert run("import", str(exported), "--model", model, "--results", "there").returncode == 0  # the same C again

    other = run("import", str(exported), "--model", str(tiny_gpt2_dir), "--results", "there")
    assert other.returncode == 2 and "not of" in other.stderr and "stats compute" in other.stderr
    C = artifacts.read_tensors(exported)["C"]
    artifacts.write_safetensors({"C": C[:-1, :-1]}, tmp_path / "narrow.safetensors", metadata=meta)
    narrow = run("import", "narrow.safetensors", "--model", model, "--results", "fresh")
    assert narrow.returncode == 2 and "takes keys of width" in narrow.stderr and not (tmp_path / "fresh").exists()
    artifacts.write_safetensors({"C": C}, tmp_path / "moved.safetensors", metadata={**meta, "source": "file:other.txt"})
    moved = run("import", "moved.safetensors", "--model", model, "--results", "fresh")
    assert moved.returncode == 2 and "altered" in moved.stderr
    damaged = tmp_path / "damaged.safetensors"
    flipped = bytearray(exported.read_bytes())
    flipped[-3] ^= 0xFF  # a bit of C itself
    damaged.write_bytes(bytes(flipped))
    assert run("import", "damaged.safetensors", "--model", model, "--results", "fresh").returncode == 2
    artifacts.write_safetensors({"C": 2 * C}, tmp_path / "twice.safetensors", metadata=meta)
    twice = run("import", "twice.safetensors", "--model", model, "--results", "there")
    assert twice.returncode == 2 and "already holds a different C" in twice.stderr
    assert torch.equal(artifacts.read_tensors(placed)["C"], C)  # not overwritten
    assert run("import", "--model", model).returncode == 2  # import without files
