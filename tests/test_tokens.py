import pytest

from editscale.models.tokens import continuation_span, fill, subject_last_token


@pytest.fixture(params=["bos", "plain"])
def tokenizer(request, bos_tokenizer, plain_tokenizer):
    return {"bos": bos_tokenizer, "plain": plain_tokenizer}[request.param]


def test_tokenizers_differ_in_bos(bos_tokenizer, plain_tokenizer):
    assert bos_tokenizer("Paris")["input_ids"][0] == bos_tokenizer.bos_token_id
    assert plain_tokenizer("Paris")["input_ids"][0] != plain_tokenizer.bos_token_id


@pytest.mark.parametrize("prompt,target", [
    ("The mother tongue of Danielle Darrieux is", " French"),
    ("Angola is located in", " Antarctica"),
    ("Toyota is owned by", " Volkswagen Group of America"),
])
def test_continuation_span_decodes_to_the_target(tokenizer, prompt, target):
    span = continuation_span(tokenizer, prompt, target)
    assert tokenizer.decode(span.target_ids) == target
    assert tokenizer.decode(span.ids[:span.start], skip_special_tokens=True) == prompt
    assert span.ids == tokenizer(prompt + target)["input_ids"]
    if tokenizer.bos_token_id in span.ids:
        # The authors' bug: tok(" " + target) alone would carry a BOS into the target.
        assert tokenizer.bos_token_id not in span.target_ids
        assert tokenizer(target)["input_ids"] != span.target_ids


def test_empty_continuation_is_an_error(tokenizer):
    with pytest.raises(ValueError):
        continuation_span(tokenizer, "Paris is in", "")


def _subject_at(tokenizer, template, subject):
    ids, index = subject_last_token(tokenizer, template, subject)
    text, end = fill(template, subject)
    # The chosen token ends the subject: decoding up to it covers the subject, one fewer does not.
    upto = tokenizer.decode(ids[: index + 1], skip_special_tokens=True)
    before = tokenizer.decode(ids[:index], skip_special_tokens=True)
    return upto, before, text[:end]


@pytest.mark.parametrize("template,subject", [
    ("The mother tongue of {} is", "Danielle Darrieux"),
    ("{} is located in", "Angola"),
    ("{}", "Angola"),  # the subject is the whole prompt
    ("Paris is the capital of France, and {} is in", "Paris"),  # subject appears twice
    ("{} is in France, as Paris says", "Paris"),
])
def test_subject_last_token(tokenizer, template, subject):
    upto, before, expected_prefix = _subject_at(tokenizer, template, subject)
    assert upto.startswith(expected_prefix)  # the token reaches the subject's end...
    assert len(before) < len(expected_prefix)  # ...and is the first that does


def test_subject_twice_picks_the_placeholder(tokenizer):
    first = subject_last_token(tokenizer, "{} is in France, as Paris says", "Paris")[1]
    second = subject_last_token(tokenizer, "Paris is the capital, and {} is in France", "Paris")[1]
    assert first < second


def test_template_without_placeholder_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        subject_last_token(tokenizer, "Paris is in", "Paris")
