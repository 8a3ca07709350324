"""bench/records/portable_record.py: machine paths become placeholders, whole path components only, and no
committed record in results/ holds one."""
import json

import numpy as np

from bench.records.portable_record import data_fingerprint, machine_paths, places, plan, rewrite
from tests.helpers import ROOT


def test_paths_become_placeholders_by_whole_components(tmp_path):
    pairs = places("/root/data/cifar", "/root/records", repo="/work/main")
    text = ("/root/data/cifar/cifar-10-batches-py /root/data/cifar10_folder/x /root/records/r/train "
            "/work/main/configs/a.json /work/mainline")
    assert rewrite(text, pairs) == ("DATA/cifar-10-batches-py /root/data/cifar10_folder/x WORK_DIR/r/train "
                                    "configs/a.json /work/mainline")


def test_plan_rewrites_json_logs_and_npz_metadata(tmp_path):
    (tmp_path / "a.json").write_text('{\n  "checkpoint": "/root/records/n/train/last.pth",\n  "x": 1\n}\n')
    (tmp_path / "info.log").write_text("run folder /root/records/n/train | cpu\n")
    np.savez(tmp_path / "logits.npz", meta=np.array(json.dumps({"checkpoint": "/root/records/n/last.pth"})),
             test_logits=np.zeros((2, 3), np.float16))
    (tmp_path / "clean.json").write_text('{"a": "configs/x.json"}\n')
    changes = plan(tmp_path, places(None, "/root/records"))
    assert set(changes) == {"a.json", "info.log", "logits.npz"}
    assert changes["a.json"] == '{\n  "checkpoint": "WORK_DIR/n/train/last.pth",\n  "x": 1\n}\n'  # layout kept
    assert [name for name, _ in machine_paths(tmp_path)] == ["a.json", "info.log", "logits.npz"]


def test_the_data_is_named_by_its_files(tmp_path):
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "b1").write_bytes(b"abc")
    fp = data_fingerprint(tmp_path, "CIFAR10LTDataModule")
    assert fp["files"] == {"batches/b1": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert data_fingerprint(None, "DigitsLTDataModule")["files"] is None


def test_no_committed_record_holds_a_machine_path():
    folders = [p for p in (ROOT / "results").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert folders
    for folder in folders:
        assert machine_paths(folder) == [], folder.name
