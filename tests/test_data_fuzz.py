"""The loader against malformed records, one table row each: every one is refused with a message
naming the file, the case and the field (the valid records it is built from load)."""

import copy
import json

import pytest

from editscale import data
from editscale.data.counterfact import CounterFactError

FULL = {
    "case_id": 41, "pararel_idx": 0,
    "requested_rewrite": {"prompt": "{} is located in", "relation_id": "P30", "subject": "Angola",
                          "target_new": {"str": "Antarctica", "id": "Q51"}, "target_true": {"str": "Africa", "id": "Q15"}},
    "paraphrase_prompts": ["Angola belongs to", "Where is Angola? In"],
    "neighborhood_prompts": ["Ghana is in", "Kenya is in"], "attribute_prompts": [], "generation_prompts": ["Angola's"],
}
EASY = {"case_id": 42, "prompt": "Ghana is located in", "target_new": "Europe", "subject": "Ghana",
        "ground_truth": "Africa", "rephrase_prompt": "Ghana belongs to", "locality_prompt": "Kenya is in",
        "locality_ground_truth": "Africa"}


def at(record, dotted, value):
    """`record` with the field at `dotted` set to `value` (or removed, for value DROP)."""
    record = copy.deepcopy(record)
    *path, last = dotted.split(".")
    target = record
    for name in path:
        target = target[name]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return record


DROP = object()
RW = "requested_rewrite"
# (base record, field to break, bad value, the field the message must name)
CASES = [
    # missing fields
    *[(FULL, f, DROP, f) for f in (f"{RW}", f"{RW}.prompt", f"{RW}.subject", f"{RW}.relation_id", f"{RW}.target_new",
                                     f"{RW}.target_new.str", f"{RW}.target_true", f"{RW}.target_true.str",
                                     "paraphrase_prompts", "neighborhood_prompts", "generation_prompts")
      if f != RW],
    *[(EASY, f, DROP, f) for f in ("prompt", "subject", "target_new", "ground_truth", "rephrase_prompt",
                                   "locality_prompt")],
    # wrong types
    (FULL, "case_id", "41", "case_id"), (FULL, "case_id", 4.5, "case_id"), (FULL, "case_id", True, "case_id"),
    (FULL, "case_id", None, "case_id"), (EASY, "case_id", [42], "case_id"),
    (FULL, f"{RW}.prompt", 3, f"{RW}.prompt"), (FULL, f"{RW}.subject", ["Angola"], f"{RW}.subject"),
    (FULL, f"{RW}.target_new", "Antarctica", f"{RW}.target_new"), (FULL, f"{RW}.target_true.str", None,
                                                                   f"{RW}.target_true.str"),
    (FULL, f"{RW}.relation_id", 30, f"{RW}.relation_id"), (FULL, RW, "rewrite", RW),
    (FULL, "paraphrase_prompts", "Angola belongs to", "paraphrase_prompts"),
    (FULL, "paraphrase_prompts", ["ok", 3], "paraphrase_prompts"),
    (FULL, "neighborhood_prompts", {"a": "b"}, "neighborhood_prompts"),
    (FULL, "generation_prompts", [None], "generation_prompts"),
    (EASY, "prompt", None, "prompt"), (EASY, "target_new", {"str": "x"}, "target_new"),
    (EASY, "ground_truth", 1, "ground_truth"), (EASY, "rephrase_prompt", ["a"], "rephrase_prompt"),
    (EASY, "locality_prompt", 0, "locality_prompt"), (EASY, "subject", False, "subject"),
    # values out of range
    (FULL, "case_id", 2**63, "case_id"), (EASY, "case_id", -(2**63) - 1, "case_id"),
    # templates
    (FULL, f"{RW}.prompt", "Angola is located in", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{} and {} are located in", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{x} is located in", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{} is located in {", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{} is located in }", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{{}} is located in", f"{RW}.prompt"),
    (FULL, f"{RW}.prompt", "{0} is located in", f"{RW}.prompt"),
    (EASY, "prompt", "Ghana {} is located in", "prompt"), (EASY, "prompt", "Ghana is in {region}", "prompt"),
    (EASY, "prompt", "It is located in", "prompt"),
    # empty text
    (FULL, f"{RW}.subject", "", f"{RW}.subject"), (FULL, f"{RW}.subject", "  ", f"{RW}.subject"),
    (FULL, f"{RW}.target_new.str", "", f"{RW}.target_new.str"),
    (FULL, f"{RW}.target_true.str", " ", f"{RW}.target_true.str"),
    (EASY, "target_new", "", "target_new"), (EASY, "ground_truth", "\t", "ground_truth"),
    (EASY, "subject", "", "subject"),
    # empty prompt lists and prompts (their scores would be undefined)
    (FULL, "paraphrase_prompts", [], "paraphrase_prompts"), (FULL, "neighborhood_prompts", [], "neighborhood_prompts"),
    (FULL, "paraphrase_prompts", ["Angola belongs to", ""], "paraphrase_prompts[1]"),
    (FULL, "paraphrase_prompts", ["   "], "paraphrase_prompts[0]"),
    (FULL, "neighborhood_prompts", ["Ghana is in", "\n"], "neighborhood_prompts[1]"),
    (EASY, "rephrase_prompt", "", "rephrase_prompt"), (EASY, "locality_prompt", " ", "locality_prompt"),
    # targets that are not a single trimmed line
    (FULL, f"{RW}.target_new.str", "Ant\narctica", f"{RW}.target_new.str"),
    (FULL, f"{RW}.target_true.str", "Africa\n", f"{RW}.target_true.str"),
    (FULL, f"{RW}.target_new.str", " Antarctica", f"{RW}.target_new.str"),
    (FULL, f"{RW}.target_new.str", "Antarctica\r", f"{RW}.target_new.str"),
    (EASY, "target_new", "Europe ", "target_new"), (EASY, "ground_truth", "Af\nrica", "ground_truth"),
    # edits that change nothing
    (FULL, f"{RW}.target_new.str", "Africa", f"{RW}.target_new.str"), (EASY, "target_new", "Africa", "target_new"),
]


def test_the_table_is_large_and_its_base_records_load(tmp_path):
    assert len(CASES) >= 60
    path = tmp_path / "good.json"
    path.write_text(json.dumps([FULL, EASY]))
    assert list(data.load_counterfact(path).case_id) == [41, 42]


@pytest.mark.parametrize("base,field,value,named", CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_a_malformed_record_is_refused_by_file_case_and_field(tmp_path, base, field, value, named):
    bad = at(base, field, value)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps([FULL if base is EASY else EASY, bad]))
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact(path)
    message = str(err.value)
    assert str(path) in message
    assert f"case_id {bad['case_id']}" in message, message  # as the file spells it
    assert f"'{named}'" in message, message
    assert ";" in message.split(f"'{named}'", 1)[1]  # and then what to do about it


@pytest.mark.parametrize("name", ["extra.jsonl", "more.json.gz", "table.parquet"])
def test_a_data_file_the_folder_would_not_read_is_an_error(tmp_path, name):
    (tmp_path / "good.json").write_text(json.dumps([FULL]))
    (tmp_path / name).write_text("")
    with pytest.raises(CounterFactError, match=f"{name.replace('.', '[.]')}.*would not be read"):
        data.load_counterfact(tmp_path)
