"""train.py -> test.py end to end on generated list data (32-px JPEGs, 2 persistent workers, the
test-distribution lists written by the tool), the scripts' main() called in this process: a run stopped and
resumed equal to an uninterrupted one, evaluation of every list, test-time aggregation on every list, and an
unreadable image in a worker as a one-line error.
"""
import json
import re

from data_txt.make_test_distributions import main as tool_main
from tests.helpers import ROOT, assert_same_state, run_entry, write_config
from tests.list_data import small_list_config, write_list_dataset

def message_lines(stderr):
    """stderr without the progress bar (tqdm writes it there, redrawn and cleared) and blank lines."""
    lines = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))
    return [line for line in lines if line.strip() and not re.match(r"epoch \d+/\d+: .*it/s\]$", line)]


def test_train_resume_and_evaluate_on_the_distribution_lists(tmp_path, capfd):
    lists = write_list_dataset(tmp_path / "data")
    tool_main(["--train", str(lists["train_txt"]), "--test", str(lists["test_txt"]), "--out", str(tmp_path / "dist"),
               "--ratios", "5", "2"])
    pattern = str(tmp_path / "dist" / "test_{name}.txt")
    cfg = write_config(tmp_path / "c.json", small_list_config(lists, tmp_path / "saved", epochs=2, num_workers=2,
                                                              loader="PlacesLTDataLoader",
                                                              test_distribution_txt=pattern))
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "full", "-d", "cpu"], capfd)
    assert code == 0, err
    run = tmp_path / "saved" / "small_list" / "full"
    log = (run / "info.log").read_text()
    assert "relabelled by descending training frequency" in log and "35 training images, 5 classes" in log
    # stopped after one epoch and resumed (the workers' draws restored): the same weights
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "half", "-d", "cpu", "--epochs", "1"], capfd)
    assert code == 0, err
    code, _, err = run_entry("train.py", ["-r", tmp_path / "saved" / "small_list" / "half" / "last.pth", "--epochs",
                                          "2", "-d", "cpu"], capfd)
    assert code == 0, err
    assert_same_state(run / "last.pth", tmp_path / "saved" / "small_list" / "half" / "last.pth")

    out = tmp_path / "eval.json"
    code, stdout, err = run_entry("test.py", ["-r", run / "last.pth", "--out", out, "--macs", "-d", "cpu"], capfd)
    assert code == 0, err[-3000:]
    assert "MACs per image (ResNet32Model, 3 expert(s), 32 px)" in stdout
    results = json.loads(out.read_text())["distributions"]
    assert list(results) == ["forward5", "forward2", "uniform", "backward2", "backward5"]
    sizes = {name: len((tmp_path / "dist" / f"test_{name}.txt").read_text().splitlines()) for name in results}
    assert {name: m["num_images"] for name, m in results.items()} == sizes
    assert sizes["uniform"] == 20 and sizes["forward5"] == 8

    tt_config = json.loads(open(ROOT / "configs" / "test_time_places_lt_tade.json").read())
    tt_config["test_time"]["args"].update(num_workers=0, batch_size=8, epochs=2)
    tt = write_config(tmp_path / "tt.json", tt_config)
    tt_out = tmp_path / "tt_out.json"
    code, _, err = run_entry("test_train.py", ["-c", tt, "-r", run / "last.pth", "--out", tt_out, "-d", "cpu"], capfd)
    assert code == 0, err[-3000:]
    adapted = json.loads(tt_out.read_text())["distributions"]
    assert list(adapted) == list(results)
    for name, m in adapted.items():
        assert m["num_images"] == sizes[name] and len(m["weights"]) == 3 and 1 <= m["epochs_run"] <= 2
        assert m["top1_average"] == results[name]["top1"]  # the plain average is test.py's figure


def test_unreadable_image_in_a_worker_is_one_line(tmp_path, capfd):
    lists = write_list_dataset(tmp_path / "data")
    first = lists["train_txt"].read_text().split()[0]
    (lists["data_dir"] / first).write_bytes(b"\xff\xd8 truncated")
    cfg = write_config(tmp_path / "c.json", small_list_config(lists, tmp_path / "saved", num_workers=2))
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "x", "-d", "cpu"], capfd)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1, lines
    for fragment in ("error: cannot read image", str(lists["data_dir"] / first), f"{lists['train_txt']}, line 1"):
        assert fragment in lines[0], lines[0]
