"""CounterFact loading on the real offline files, and every malformed-input case."""

import json

import pandas as pd
import pytest

from conftest import SHARED
from editscale import data
from editscale.data import CounterFactError

needs_data = pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")
FULL = SHARED / "counterfact" / "full" if SHARED else None
EASY = SHARED / "counterfact" / "easyedit" if SHARED else None


@needs_data
def test_full_files_hold_520_distinct_records():
    frame = data.load_counterfact(FULL, unique_subjects=False)
    assert frame.shape == (520, len(data.COLUMNS)) and frame.case_id.is_unique
    assert (frame.format == "full").all()
    assert frame.prompt.str.contains("{}", regex=False).all()
    assert frame.paraphrase_prompts.map(len).eq(2).all() and frame.neighborhood_prompts.map(len).eq(10).all()


@needs_data
def test_easyedit_files_hold_20000_distinct_records():
    frame = data.load_counterfact(EASY, unique_subjects=False)
    assert len(frame) == 20_000 and frame.case_id.is_unique
    assert (frame.format == "easyedit").all() and frame.relation_id.isna().all()
    assert frame.paraphrase_prompts.map(len).eq(1).all() and frame.neighborhood_prompts.map(len).eq(1).all()


@needs_data
def test_full_records_agree_with_their_easyedit_twins():
    full = data.load_counterfact(FULL, unique_subjects=False)
    easy = data.load_counterfact(EASY, unique_subjects=False)
    twins = full.merge(easy, on="case_id", suffixes=("_full", "_easy"))
    # The issue expected 470; the files hold 474 shared case_ids (and 46 full-only ones).
    assert len(twins) == 474
    for field in ("subject", "prompt", "target_new", "target_true"):
        assert (twins[f"{field}_full"] == twins[f"{field}_easy"]).all(), field


@needs_data
def test_unique_subjects_keep_517_of_520():
    frame = data.load_counterfact(FULL)
    assert len(frame) == 517 and frame.subject.is_unique


@needs_data
def test_mixed_sources_merge_twins_and_prefer_full_rows():
    both = data.load_counterfact([FULL, EASY], unique_subjects=False)
    assert both.case_id.is_unique and len(both) == 520 + 20_000 - 474
    full_ids = set(data.load_counterfact(FULL, unique_subjects=False).case_id)
    assert (both[both.case_id.isin(full_ids)].format == "full").all()


@needs_data
def test_selection_is_seeded_and_deterministic():
    a = data.load_counterfact(FULL, n=32, seed=0)
    b = data.load_counterfact(FULL, n=32, seed=0)
    c = data.load_counterfact(FULL, n=32, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 32 and a.subject.is_unique and a.case_id.is_monotonic_increasing
    assert set(a.case_id) != set(c.case_id)


@needs_data
def test_parquet_round_trip(tmp_path):
    frame = data.load_counterfact(FULL, n=20, seed=0)
    data.write_records(frame, tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(data.read_records(tmp_path / "r.parquet"), frame)


def full_record(case_id=1, **rewrite):
    record = {
        "case_id": case_id, "pararel_idx": 0,
        "requested_rewrite": {"prompt": "{} is located in", "relation_id": "P30", "subject": "Angola",
                              "target_new": {"str": "Antarctica", "id": "Q51"},
                              "target_true": {"str": "Africa", "id": "Q15"}},
        "paraphrase_prompts": ["Angola belongs to", "Angola is part of"],
        "neighborhood_prompts": ["Ghana is in"], "attribute_prompts": [], "generation_prompts": ["Angola's"],
    }
    record["requested_rewrite"].update(rewrite)
    return record


def write(tmp_path, records, name="cf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def easy_record(case_id=1, **fields):
    record = {"case_id": case_id, "prompt": "Angola is located in", "target_new": "Antarctica", "subject": "Angola",
              "ground_truth": "Africa", "rephrase_prompt": "Angola belongs to", "locality_prompt": "Ghana is in",
              "locality_ground_truth": "Africa"}
    record.update(fields)
    return record


@pytest.mark.parametrize("record,field", [
    (full_record(7, prompt="Angola is located in"), "requested_rewrite.prompt"),
    (easy_record(7, prompt="It is located in"), "prompt"),
    (full_record(7, target_new={"str": " ", "id": "x"}), "target_new"),
    (easy_record(7, ground_truth=""), "target_true"),
    (full_record(7, target_new={"str": "Africa", "id": "Q15"}), "target_new"),
    (easy_record(7, target_new="Africa"), "target_new"),
])
def test_bad_records_name_file_case_and_field(tmp_path, record, field):
    path = write(tmp_path, [record])
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact(path)
    message = str(err.value)
    assert path.name in message and "case_id 7" in message and field in message


def test_missing_field_and_wrong_type(tmp_path):
    record = full_record(7)
    del record["requested_rewrite"]["subject"]
    with pytest.raises(CounterFactError, match=r"cf\.json: case_id 7: field 'requested_rewrite\.subject' is missing"):
        data.load_counterfact(write(tmp_path, [record]))
    record = full_record(8)
    record["paraphrase_prompts"] = "Angola belongs to"
    with pytest.raises(CounterFactError, match=r"case_id 8: field 'paraphrase_prompts' must be a list"):
        data.load_counterfact(write(tmp_path, [record]))
    with pytest.raises(CounterFactError, match=r"case_id 9: field 'target_new' must be str"):
        data.load_counterfact(write(tmp_path, [easy_record(9, target_new=["Antarctica"])]))
    with pytest.raises(CounterFactError, match=r"field 'case_id' must be int"):
        data.load_counterfact(write(tmp_path, [easy_record("9")]))


def test_not_json_and_not_a_list(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"case_id": 1,')
    with pytest.raises(CounterFactError, match=r"broken\.json is not JSON"):
        data.load_counterfact(path)
    with pytest.raises(CounterFactError, match="JSON list of record objects"):
        data.load_counterfact(write(tmp_path, {"case_id": 1}))


def test_duplicates_merge_when_identical_and_fail_when_conflicting(tmp_path):
    a = write(tmp_path, [full_record(1)], "a.json")
    b = write(tmp_path, [full_record(1)], "b.json")
    assert len(data.load_counterfact([a, b])) == 1
    c = write(tmp_path, [full_record(1, target_new={"str": "Europe", "id": "Q46"})], "c.json")
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact([a, c])
    assert all(s in str(err.value) for s in ("a.json", "c.json", "case_id 1", "target_new"))


def test_empty_selection_and_too_large_n(tmp_path):
    with pytest.raises(CounterFactError, match="no CounterFact records"):
        data.load_counterfact(write(tmp_path, []))
    path = write(tmp_path, [full_record(1), full_record(2, subject="Ghana", prompt="{} is in")], "two.json")
    with pytest.raises(CounterFactError, match="holds? 2 usable"):
        data.load_counterfact(path, n=3)
    with pytest.raises(CounterFactError):
        data.load_counterfact(path, n=0)
    with pytest.raises(CounterFactError, match="does not exist"):
        data.load_counterfact(tmp_path / "nowhere.json")


def test_official_url_uses_a_verified_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_CACHE", str(tmp_path))
    cached = tmp_path / "counterfact" / "counterfact.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps([full_record(5)]))
    monkeypatch.setattr(data, "OFFICIAL_SHA256", data._sha256(cached))
    frame = data.load_counterfact(data.OFFICIAL_URL)
    assert frame.case_id.tolist() == [5]

    def fake_download(url, target):  # what a tampered or truncated download looks like
        open(target, "w").write("[]")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", fake_download)
    cached.write_text("[]")  # the cache no longer matches, so it is fetched again
    with pytest.raises(CounterFactError, match="sha256"):
        data.load_counterfact(data.OFFICIAL_URL)
    assert not list(cached.parent.glob(".*.tmp"))  # nothing half-written is left behind
