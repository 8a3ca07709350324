"""The write rule (utils/safe_write.py) in-process: what may be replaced, atomic writes with unique
temporary names, no writing through links, records read-only, NaN never written; run-folder names
and the recognition of a failed start's leftovers (utils/run_folder.py)."""
import json
import os
import threading

import numpy as np
import pytest

from utils import safe_write
from utils.errors import UserError, one_line, shown
from utils.result_path import check_result_path
from utils.run_folder import RunFolder, check_folder_name


def test_a_file_another_tool_wrote_or_a_users_file_is_refused(tmp_path):
    ours = safe_write.write_json(tmp_path / "r.json", {"written_by": "tool-a", "x": 1})
    assert safe_write.check_target(ours, "tool-a") == ours
    with pytest.raises(UserError, match="not a result file of tool-b"):
        safe_write.check_target(ours, "tool-b")
    users = tmp_path / "mine.json"
    users.write_text('{"x": 1}')
    with pytest.raises(UserError, match="refusing to replace it"):
        safe_write.check_target(users, "tool-a")
    assert safe_write.check_target(users, "tool-a", legacy=lambda payload: "x" in payload) == users


def test_a_link_is_never_written_through_nor_replaced(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"written_by": "tool-a"}')
    link = tmp_path / "link.json"
    link.symlink_to(outside)
    with pytest.raises(UserError, match="is a link"):
        safe_write.check_target(link, "tool-a")
    with pytest.raises(UserError, match="is a link"):
        safe_write.open_append(link)
    assert outside.read_text() == '{"written_by": "tool-a"}'


def test_side_files_are_replaced_only_when_byte_for_byte_the_ones_the_result_listed(tmp_path):
    out = tmp_path / "eval.json"
    png = tmp_path / "eval_reliability.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfirst")
    from utils.results import write_results
    write_results({"written_by": "test.py", "checkpoint": "c", "distributions": {"u": {"top1": 0.5}}}, out,
                  beside=[png])
    listed = json.loads(out.read_text())["files"]
    assert set(listed) == {"eval.csv", "eval_reliability.png"} and listed["eval.csv"].startswith("sha256:")
    check_result_path(out, "test.py", [out.with_suffix(".csv"), png])  # the earlier run's files
    png.write_bytes(b"\x89PNG\r\n\x1a\nsomeone else's")  # replaced since, even by another PNG
    with pytest.raises(UserError, match="not the file an earlier result of this tool wrote"):
        check_result_path(out, "test.py", [out.with_suffix(".csv"), png])
    png.unlink()
    png.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(UserError, match="is a link"):
        check_result_path(out, "test.py", [png])


def test_a_results_path_that_a_side_file_would_replace_is_refused(tmp_path):
    """--out x.csv (or x.png for test_train.py): the table or plot written beside the results would
    replace the results themselves."""
    for out, sides in (("x.csv", ["x.csv", "x_reliability.png"]), ("x.png", ["x.csv", "x.png"])):
        with pytest.raises(UserError, match="writes a file of that name beside the results"):
            check_result_path(tmp_path / out, "test_train.py", [tmp_path / side for side in sides])
    assert not list(tmp_path.iterdir())
    check_result_path(tmp_path / "x.json", "test.py", [tmp_path / "x.csv", tmp_path / "x_reliability.png"])


def test_records_are_read_only_except_a_record_being_assembled(tmp_path):
    record = tmp_path / "results" / "rec"
    record.mkdir(parents=True)
    (record / "record.json").write_text('{"name": "rec"}')
    with pytest.raises(UserError, match="recorded result"):
        safe_write.check_target(record / "new.json", "tool-a")
    assert safe_write.record_of(safe_write.RESULTS / "any_record" / "x.json") is not None
    assert safe_write.record_of(safe_write.RESULTS / ".any_record.partial" / "x.json") is None


def test_nan_is_never_written_and_nothing_is_left(tmp_path):
    with pytest.raises(UserError, match="NaN or infinite"):
        safe_write.write_json(tmp_path / "r.json", {"top1": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = safe_write.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(UserError, match=f"cannot write {target}: No space left"):
        with safe_write.atomic_file(target) as f:
            f.write(b"new")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_two_writers_at_once_never_share_a_temporary_file(tmp_path):
    """Two saves of one logits file at the same moment (as two test.py with one --out): each writes
    its own temporary file, and the file that remains is whole."""
    from trainer.saved_logits import load_logits, save_logits
    import torch
    barrier, temps = threading.Barrier(2), []
    real = np.savez_compressed

    def slow_savez(f, **arrays):
        temps.append(f.name)
        barrier.wait(timeout=30)  # both writers are inside their temporary file now
        real(f, **arrays)

    splits = {"test": (torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0]))}
    np.savez_compressed = slow_savez
    try:
        threads = [threading.Thread(target=save_logits, args=(tmp_path / "l.npz", splits, [3, 2, 1],
                                                             {"uniform": [0, 1]}, {})) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        np.savez_compressed = real
    assert len(set(temps)) == 2
    assert load_logits(tmp_path / "l.npz").splits["test"][0].shape == (4, 2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["l.npz"]


@pytest.mark.parametrize("value", ["../..", "/abs", "a/b", "..", ".hidden", "x" * 101, "", "a b", "é"])
def test_run_folder_names_are_one_safe_component(value):
    with pytest.raises(UserError, match="one folder name"):
        check_folder_name(value, "--run_id")


def test_a_long_value_is_not_echoed_whole():
    assert len(shown("x" * 10_000_000)) < 120
    assert len(one_line("y" * 10_000_000)) < 1100


def _failed_start(folder, config):
    folder.mkdir(parents=True)
    safe_write.write_json(folder / "config.json", config, indent=4)
    (folder / "info.log").write_text("10:00:00 run folder ...\n10:00:01 epoch 1 ...\n")


def test_only_a_failed_starts_files_are_taken_over_and_a_users_checkpoint_never(tmp_path):
    config = {"name": "n", "trainer": {"epochs": 1}}
    _failed_start(tmp_path / "n" / "ok", config)
    folder = RunFolder.create(tmp_path, "n", "ok")
    assert folder.reused and sorted(os.listdir(folder.path)) == [".lock"]
    folder.close()
    for extra, content in (("model_best.pth", b"a user's checkpoint"), ("notes.txt", b"mine")):
        run = tmp_path / "n" / extra.split(".")[0]
        _failed_start(run, config)
        (run / extra).write_bytes(content)
        with pytest.raises(UserError, match=f"already exists.*{extra}"):
            RunFolder.create(tmp_path, "n", run.name)
        assert (run / extra).read_bytes() == content and (run / "config.json").exists()
    edited = tmp_path / "n" / "edited"
    _failed_start(edited, config)
    (edited / "config.json").write_text(json.dumps(config))  # not what a failed start writes, byte for byte
    with pytest.raises(UserError, match="already exists"):
        RunFolder.create(tmp_path, "n", "edited")


def test_a_folder_this_run_created_loses_only_what_this_run_wrote(tmp_path):
    folder = RunFolder.create(tmp_path, "n", "r")
    folder.write_config({"trainer": {}})
    (folder.path / "keep.txt").write_text("appeared meanwhile")
    folder.discard_if_unused()
    assert sorted(os.listdir(tmp_path / "n" / "r")) == ["keep.txt"]
