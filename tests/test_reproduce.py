"""bench/records/reproduce.py on a tiny generated CIFAR-100 with a 1-epoch budget, its steps (train.py,
test.py, test_train.py) called in this process."""
import pytest

from bench.records import steps
from tests.helpers import launch_in_process, run_entry, small_data_sets, write_cifar100

REPRODUCE = "bench/records/reproduce.py"


@pytest.fixture
def steps_in_process(monkeypatch):
    monkeypatch.setattr(steps, "launch", launch_in_process)


def tiny_sets(data_dir):
    """``small_data_sets`` at the tiny recipe's size (101 training images, tests/helpers.py tiny_cifar_config):
    what is checked here is the tool's table, seeds and reuse, not what one epoch learns."""
    return [*small_data_sets(data_dir), "data_loader.args.img_max=2", "data_loader.args.imb_factor=0.5"]


def test_reproduce_table_and_reuse(tmp_path, steps_in_process, capfd):
    data_dir = write_cifar100(tmp_path / "data", train_per_class=2, test_per_class=2)
    argv = ["--dataset", "cifar100_ir100", "--methods", "softmax,ride,tade", "--epochs", "1",
            "--out_dir", tmp_path / "runs", "-d", "cpu"]
    for s in tiny_sets(data_dir):
        argv += ["--set", s]
    code, _, err = run_entry(REPRODUCE, argv, capfd)
    assert code == 0, err[-3000:]
    table = (tmp_path / "runs" / "cifar100_ir100" / "results_e1.md").read_text()
    header = table.splitlines()[0]
    for col in ("F50", "F25", "F10", "F5", "F2", "Uni", "B2", "B5", "B10", "B25", "B50", "GMACs", "images/s"):
        assert f" {col} " in header, col
    for row in ("Softmax (1 ep, measured)", "Softmax (published)", "RIDE (1 ep, measured)", "RIDE (published)",
                "TADE (1 ep, measured)", "TADE (published)", "TADE, no test-time step (1 ep, measured)"):
        assert f"| {row} |" in table, row
    measured = [line for line in table.splitlines() if "measured" in line]
    assert all(len([c for c in line.split("|")[2:13] if c.strip()]) == 11 for line in measured)
    log = tmp_path / "runs" / "cifar100_ir100" / "reproduce.log"
    steps = log.read_text().count("$ ")
    assert steps == 3 + 3 + 1  # three trainings, three evaluations, one test-time aggregation
    code, out, err = run_entry(REPRODUCE, argv, capfd)
    assert code == 0, err[-3000:]
    assert out.count("already trained") == 3
    assert log.read_text().count("$ ") == steps  # nothing re-run
    assert (tmp_path / "runs" / "cifar100_ir100" / "results_e1.md").read_text() == table


def test_schedule_scaling_to_budget():
    from bench.records.reproduce import scaled_overrides
    config = {"trainer": {"epochs": 200}, "lr_scheduler": {"args": {"step1": 160, "step2": 180, "gamma": 0.1,
                                                                    "warmup_epoch": 5}},
              "loss": {"args": {"reweight_epoch": 160}}}
    assert scaled_overrides(config, 20) == ["lr_scheduler.args.step1=16", "lr_scheduler.args.step2=18",
                                            "lr_scheduler.args.warmup_epoch=1", "loss.args.reweight_epoch=16"]
    assert scaled_overrides(config, 200) == []


def test_seeds_give_mean_and_std_per_distribution(tmp_path, steps_in_process, capfd):
    data_dir = write_cifar100(tmp_path / "data", train_per_class=2, test_per_class=2)
    argv = ["--dataset", "cifar100_ir100", "--methods", "softmax", "--epochs", "1", "--seeds", "1", "2",
            "--out_dir", tmp_path / "runs", "-d", "cpu"]
    for s in tiny_sets(data_dir):
        argv += ["--set", s]
    code, _, err = run_entry(REPRODUCE, argv, capfd)
    assert code == 0, err[-3000:]
    runs = tmp_path / "runs" / "cifar100_ir100" / "softmax"
    assert (runs / "e1_s1" / "last.pth").is_file() and (runs / "e1_s2" / "last.pth").is_file()
    import json
    import statistics
    per_seed = [json.loads((runs / f"e1_s{s}" / "eval_last.json").read_text())["distributions"] for s in (1, 2)]
    row = next(line for line in (tmp_path / "runs" / "cifar100_ir100" / "results_e1.md").read_text().splitlines()
               if line.startswith("| Softmax (1 ep, 2 seeds, measured)"))
    uniform = [100 * d["uniform"]["top1"] for d in per_seed]
    expected = f"{sum(uniform) / 2:.1f} +- {statistics.stdev(uniform):.1f}"
    assert row.split("|")[7].strip() == expected  # column 6 of the eleven: Uni
