"""CounterFact loading: facts about the real offline files, then every malformed-input case."""

import hashlib
import io
import json

import pandas as pd
import pytest
from conftest import SHARED

from editscale import artifacts
from editscale.data import counterfact as data
from editscale.data import records
from editscale.data.counterfact import CounterFactError

# Only the tests on the real files need them; the malformed-input tests build their own.
needs_data = pytest.mark.skipif(SHARED is None, reason="needs the offline data folder (shared/data)")
FULL = SHARED / "counterfact" / "full" if SHARED else None
EASY = SHARED / "counterfact" / "easyedit" if SHARED else None


@pytest.fixture(scope="module")
def full():
    return data.load_counterfact(FULL, unique_subjects=False)


@pytest.fixture(scope="module")
def easy():
    return data.load_counterfact(EASY, unique_subjects=False)


@needs_data
def test_full_files_hold_520_distinct_records(full):
    assert full.shape == (520, len(records.COLUMNS)) and list(full.columns) == records.COLUMNS
    assert full.case_id.is_unique and full.case_id.is_monotonic_increasing
    assert (full.format == "full").all() and full.relation_id.notna().all()
    assert full.prompt.str.contains("{}", regex=False).all()
    assert full.paraphrase_prompts.map(len).eq(2).all() and full.neighborhood_prompts.map(len).eq(10).all()
    assert full.dtypes.case_id == "int64" and all(full.dtypes[c] == "string" for c in records.STRING_COLUMNS)
    assert all(isinstance(p, str) for prompts in full.generation_prompts for p in prompts)


@needs_data
def test_easyedit_files_hold_20000_distinct_records(easy):
    assert len(easy) == 20_000 and easy.case_id.is_unique
    assert (easy.format == "easyedit").all() and easy.relation_id.isna().all()
    assert easy.prompt.str.contains("{}", regex=False).all()
    assert easy.paraphrase_prompts.map(len).eq(1).all() and easy.neighborhood_prompts.map(len).eq(1).all()
    assert easy.generation_prompts.map(len).eq(0).all()


@needs_data
def test_full_records_agree_with_their_easyedit_twins(full, easy):
    twins = full.merge(easy, on="case_id", suffixes=("_full", "_easy"))
    # The brief said 470 and the data README says every full record has a twin; the
    # files hold 474 shared case_ids (46 full records have none).
    assert len(twins) == 474
    for field in ("subject", "prompt", "target_new", "target_true"):
        assert (twins[f"{field}_full"] == twins[f"{field}_easy"]).all(), field


@needs_data
def test_unique_subjects_keep_517_of_520(full):
    unique = data.load_counterfact(FULL)
    assert len(unique) == 517 and unique.subject.is_unique
    # The lowest case_id of each repeated subject is the one kept.
    assert set(unique.case_id) == set(full.drop_duplicates("subject").case_id)


@needs_data
def test_mixed_sources_merge_twins_and_prefer_full_rows(full, easy):
    for sources in ([FULL, EASY], [EASY, FULL]):
        both = data.load_counterfact(sources, unique_subjects=False)
        assert both.case_id.is_unique and len(both) == len(set(full.case_id) | set(easy.case_id))
        assert (both[both.case_id.isin(full.case_id)].format == "full").all()


@needs_data
def test_selection_is_seeded_and_deterministic():
    a = data.load_counterfact(FULL, n=32, seed=0)
    b = data.load_counterfact(FULL, n=32, seed=0)
    c = data.load_counterfact(FULL, n=32, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 32 and a.subject.is_unique and a.case_id.is_monotonic_increasing
    assert set(a.case_id) != set(c.case_id)
    assert set(a.case_id) <= set(data.load_counterfact(FULL).case_id)


@needs_data
def test_parquet_round_trip(tmp_path):
    frame = pd.concat([data.load_counterfact(FULL, n=20, seed=0), data.load_counterfact(EASY, n=5, seed=0)],
                      ignore_index=True)
    records.write_records(frame, tmp_path / "r.parquet")
    back = records.read_records(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(back, frame)
    # assert_frame_equal takes a numpy array for an equal list, so check the types themselves.
    cells = [cell for column in records.LIST_COLUMNS for cell in back[column]]
    assert all(type(cell) is list and all(type(item) is str for item in cell) for cell in cells)


def test_default_sources_fall_back_to_the_official_url(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_DATA", str(tmp_path))
    assert data.default_sources() == data.OFFICIAL_URL
    (tmp_path / "counterfact" / "full").mkdir(parents=True)
    assert data.default_sources() == tmp_path / "counterfact" / "full"


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


def easy_record(case_id=1, **fields):
    record = {"case_id": case_id, "prompt": "Angola is located in", "target_new": "Antarctica", "subject": "Angola",
              "ground_truth": "Africa", "rephrase_prompt": "Angola belongs to", "locality_prompt": "Ghana is in",
              "locality_ground_truth": "Africa"}
    record.update(fields)
    return record


def without(record, field):
    del record[field]
    return record


def write(tmp_path, records, name="cf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_easyedit_prompt_becomes_a_template_at_the_first_subject(tmp_path):
    path = write(tmp_path, [easy_record(3, prompt="Angola, like Angola's north, is in")])
    row = data.load_counterfact(path).iloc[0]
    assert row.prompt == "{}, like Angola's north, is in" and row.target_true == "Africa"
    assert row.paraphrase_prompts == ["Angola belongs to"] and row.neighborhood_prompts == ["Ghana is in"]


@pytest.mark.parametrize("record,field", [
    (full_record(7, prompt="Angola is located in"), "requested_rewrite.prompt"),
    (easy_record(7, prompt="It is located in"), "'prompt'"),
    (easy_record(7, subject=" "), "'subject'"),
    (full_record(7, target_new={"str": " ", "id": "x"}), "requested_rewrite.target_new.str"),
    (easy_record(7, ground_truth=""), "ground_truth"),
    (full_record(7, target_new={"str": "Africa", "id": "Q15"}), "requested_rewrite.target_new.str"),
    (easy_record(7, target_new="Africa"), "target_new"),
    (without(full_record(7), "paraphrase_prompts"), "paraphrase_prompts"),
    (without(easy_record(7), "ground_truth"), "ground_truth"),
    (full_record(7, subject=None), "requested_rewrite.subject"),
    (full_record(7, target_true="Africa"), "requested_rewrite.target_true"),
    ({**full_record(7), "paraphrase_prompts": "Angola belongs to"}, "paraphrase_prompts"),
    ({**full_record(7), "neighborhood_prompts": ["Ghana is in", 3]}, "neighborhood_prompts"),
    (easy_record(7, ground_truth=["Africa"]), "ground_truth"),
    (easy_record("7"), "'case_id'"),
    (easy_record(7.0), "'case_id'"),
])
def test_bad_records_name_file_case_and_field(tmp_path, record, field):
    path = write(tmp_path, [easy_record(1, subject="Ghana", prompt="Ghana is in"), record])
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact(path)
    message = str(err.value)
    assert path.name in message and "case_id 7" in message and field in message


def test_missing_case_id_names_the_record(tmp_path):
    with pytest.raises(CounterFactError, match=r"cf\.json: case_id \? \(record 0\): field 'case_id' is missing"):
        data.load_counterfact(write(tmp_path, [without(easy_record(), "case_id")]))


def test_not_json_and_not_a_list(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"case_id": 1,')
    with pytest.raises(CounterFactError, match=r"broken\.json is not JSON \(.*line 1 column 16"):
        data.load_counterfact(path)
    with pytest.raises(CounterFactError, match=r"obj\.json must hold a JSON list of record objects, found a JSON dict"):
        data.load_counterfact(write(tmp_path, {"case_id": 1}, "obj.json"))
    with pytest.raises(CounterFactError, match=r"ints\.json .* non-object items"):
        data.load_counterfact(write(tmp_path, [1, 2], "ints.json"))


def test_identical_duplicates_merge_and_full_twins_win(tmp_path):
    a = write(tmp_path, [full_record(1)], "a.json")
    b = write(tmp_path, [full_record(1)], "b.json")
    e = write(tmp_path, [easy_record(1, rephrase_prompt="Angola lies in")], "e.json")
    assert len(data.load_counterfact([a, b])) == 1
    for sources in ([a, e], [e, a]):
        merged = data.load_counterfact(sources)
        assert len(merged) == 1 and merged.format[0] == "full" and merged.relation_id[0] == "P30"


@pytest.mark.parametrize("other,field", [
    (full_record(1, target_new={"str": "Europe", "id": "Q46"}), "target_new"),
    (easy_record(1, prompt="Angola is part of"), "prompt"),
    ({**full_record(1), "paraphrase_prompts": ["Angola lies in"]}, "paraphrase_prompts"),
])
def test_conflicting_duplicates_name_both_files(tmp_path, other, field):
    a = write(tmp_path, [full_record(1)], "a.json")
    c = write(tmp_path, [other], "c.json")
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact([a, c])
    assert all(s in str(err.value) for s in ("a.json", "c.json", "case_id 1", f"'{field}'"))


def test_empty_selection_and_bad_n(tmp_path):
    with pytest.raises(CounterFactError, match=r"no CounterFact records in .*empty\.json"):
        data.load_counterfact(write(tmp_path, [], "empty.json"))
    path = write(tmp_path, [full_record(1), full_record(2), full_record(3, subject="Ghana")], "three.json")
    assert data.load_counterfact(path, unique_subjects=False, n=3).case_id.tolist() == [1, 2, 3]
    # Subject uniqueness comes first: case 2 repeats case 1's subject, so only 2 remain.
    with pytest.raises(CounterFactError, match=r"n=3 .*three\.json have 2 available"):
        data.load_counterfact(path, n=3)
    with pytest.raises(CounterFactError, match=r"n=0 .*choose n between 1 and 2"):
        data.load_counterfact(path, n=0)


def test_missing_sources(tmp_path):
    with pytest.raises(CounterFactError, match=r"nowhere\.json does not exist"):
        data.load_counterfact(tmp_path / "nowhere.json")
    with pytest.raises(CounterFactError, match="holds no"):
        data.load_counterfact(tmp_path)


def test_official_url_uses_a_verified_cache_and_rejects_a_bad_download(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_CACHE", str(tmp_path))
    cached = tmp_path / "counterfact" / "counterfact.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps([full_record(5)]))
    good = artifacts.sha256(cached)
    monkeypatch.setattr(data, "OFFICIAL_SHA256", good)

    def no_network(url, timeout):
        raise AssertionError("a verified cache must not be downloaded again")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    assert data.load_counterfact(data.OFFICIAL_URL).case_id.tolist() == [5]

    def truncated_download(url, timeout):
        assert timeout == records.DOWNLOAD_TIMEOUT  # a stalled server cannot hang the run
        return io.BytesIO(b"[]")

    monkeypatch.setattr("urllib.request.urlopen", truncated_download)
    stale = json.dumps([full_record(6)])
    cached.write_text(stale)  # no longer matches, so it is fetched again
    with pytest.raises(CounterFactError) as err:
        data.load_counterfact(data.OFFICIAL_URL)
    message = str(err.value)
    assert data.OFFICIAL_URL in message and good in message and hashlib.sha256(b"[]").hexdigest() in message
    assert cached.read_text() == stale and not list(cached.parent.glob(".*.tmp"))  # nothing replaced or left over
