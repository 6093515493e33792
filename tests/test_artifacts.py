"""The resumable artifact (`artifacts.Parts`) and the value file's format (`ValueFile`)."""

import logging

import pytest
import torch

from editscale import artifacts
from editscale.editing.value_file import ValueFile
from editscale.editing.values import Values


def test_parts_resume_only_the_same_work_and_remove_the_rest(tmp_path, caplog):
    out = tmp_path / "layer3.safetensors"
    first = artifacts.Parts(out, "aaaa")
    artifacts.write_text("kept", first / "piece-0")
    again = artifacts.Parts(out, "aaaa")  # the same work: its pieces are there
    assert [p.name for p in again.paths("piece-*")] == ["piece-0"]
    with caplog.at_level(logging.INFO, logger="editscale"):
        other = artifacts.Parts(out, "bbbb")  # other settings: the old pieces are stale
    assert not first.folder.exists() and other.paths("*") == [] and "other settings" in caplog.text
    assert other.folder.name == ".layer3.bbbb.parts" and other.folder.parent == tmp_path
    artifacts.Parts(tmp_path / "layer30.safetensors", "cccc")  # another output's parts are not its own
    assert other.folder.exists()
    other.clear()
    assert not other.folder.exists()


def value_file(ids, d=3):
    n = len(ids)
    return ValueFile(torch.tensor(ids), torch.randn(n, d),
                     Values(torch.randn(n, 2), torch.randn(n, 2), torch.rand(n), torch.arange(n), torch.ones(n, dtype=torch.bool)))


def test_a_value_file_reads_back_joined_in_record_order_and_refuses_other_records(tmp_path):
    a, b = value_file([5, 3]), value_file([9])
    a.write(tmp_path / "a.safetensors")
    b.write(tmp_path / "b.safetensors")
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    read = ValueFile.for_records(paths, [5, 3], "records.parquet")
    assert read.case_id.tolist() == [5, 3] and torch.equal(read.keys, a.keys)
    assert torch.equal(read.values.residual, a.values.residual) and torch.equal(read.values.steps, a.values.steps)
    whole = ValueFile.read(paths)
    assert len(whole) == 3 and torch.equal(whole[2:].values.v_star, b.values.v_star)
    with pytest.raises(ValueError, match="do not match the records in records.parquet; rerun the values rule"):
        ValueFile.for_records(paths, [3, 5], "records.parquet")
    with pytest.raises(ValueError, match="do not match"):
        ValueFile.for_records(paths, [5, 3, 9, 1], "records.parquet")
