"""data_txt.make_test_distributions (docs/methods.md#test-distributions): published list sizes on lists with the real
class profiles, counts by training rank in both directions, and the lists read back by the data modules."""
import os
import subprocess
import sys

import numpy as np
import pytest

from data_loader import ImageNetLTDataLoader, PlacesLTDataLoader
from utils.long_tail import img_num_per_cls
from data_txt.make_test_distributions import main as tool_main
from data_txt.make_test_distributions import make_test_distributions
from tests.helpers import ROOT
from tests.list_data import TRAIN_COUNTS, list_module_args, write_list_dataset
from utils.errors import UserError

PUBLISHED = {  # docs/methods.md#test-distributions: forward = backward sizes
    "ImageNet-LT": (1000, 50, (50, 25, 10, 5, 2), {50: 12_058, 25: 14_437, 10: 19_059, 5: 24_365, 2: 35_574}),
    "Places-LT": (365, 100, (50, 25, 10, 5, 2), {50: 8_989, 25: 10_727, 10: 14_103, 5: 17_970, 2: 26_155}),
    "iNat 2018": (8142, 3, (3, 2), {2: 12_906}),
}


def write_profile(tmp_path, classes, per_class, seed=0):
    """Lines only (no images): a long-tailed training list whose frequency order is a random
    permutation of the labels, and a balanced test list."""
    rng = np.random.RandomState(seed)
    train_counts = np.asarray(img_num_per_cls(500, classes, 0.01))[rng.permutation(classes)]
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("".join(f"t/{c}/{j}.jpg {c}\n" for c in range(classes) for j in range(train_counts[c])))
    test.write_text("".join(f"v/{c}/{j}.jpg {c}\n" for c in range(classes) for j in range(per_class)))
    return train, test, train_counts


@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_published_sizes(tmp_path, dataset):
    classes, per_class, ratios, sizes = PUBLISHED[dataset]
    train, test, _ = write_profile(tmp_path, classes, per_class)
    _, subsets, _ = make_test_distributions(train, test, ratios)
    assert len(subsets["uniform"]) == classes * per_class
    for ratio, size in sizes.items():
        assert len(subsets[f"forward{ratio}"]) == len(subsets[f"backward{ratio}"]) == size


def test_counts_follow_the_formula_by_training_rank(tmp_path):
    train, test, train_counts = write_profile(tmp_path, 40, 20, seed=3)
    listing, subsets, rank = make_test_distributions(train, test, (10, 3), img_max=20)
    order = np.argsort(-train_counts, kind="stable")
    assert (rank[order] == np.arange(40)).all()
    for name, idx in subsets.items():
        got = np.bincount(listing.labels[idx], minlength=40)[order]  # by training rank
        if name == "uniform":
            assert (got == 20).all()
            continue
        expected = img_num_per_cls(20, 40, 1 / int(name[-2:].strip("dr")), reverse=name.startswith("backward"))
        assert got.tolist() == expected, name
        assert len(set(idx.tolist())) == len(idx)
    # the within-class choice is seeded: same seed, same images; another seed, others
    same = make_test_distributions(train, test, (10, 3), img_max=20)[1]["forward10"]
    assert np.array_equal(same, subsets["forward10"])
    other = make_test_distributions(train, test, (10, 3), img_max=20, seed=1)[1]["forward10"]
    assert not np.array_equal(other, subsets["forward10"])


def test_too_few_test_images_is_a_user_error(tmp_path):
    train, test, _ = write_profile(tmp_path, 10, 3)
    with pytest.raises(UserError, match="too few test images"):
        make_test_distributions(train, test, (2,), img_max=5)


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_list_dataset(tmp_path_factory.mktemp("lists"))


@pytest.fixture(scope="module")
def written(lists, tmp_path_factory):
    """The tool run as documented (python -m data_txt.make_test_distributions) on the generated lists."""
    out = tmp_path_factory.mktemp("dist")
    args = ["--train", str(lists["train_txt"]), "--test", str(lists["test_txt"]), "--out", str(out), "--ratios", "5",
            "2", "--prefix", "small"]
    proc = subprocess.run([sys.executable, "-m", "data_txt.make_test_distributions", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return out, args, proc.stdout


def test_tool_writes_lists_and_summary(written, capsys):
    out, args, stdout = written
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"small_{n}.txt" for n in ("forward5", "forward2", "uniform", "backward2", "backward5"))
    assert "5 lists in" in stdout
    head = int(np.argmax(TRAIN_COUNTS))
    assert f"forward5          8 images | most frequent training class {head}: 4, least frequent 4: 0" in stdout
    with pytest.raises(SystemExit) as e:  # existing lists are kept
        tool_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--force" in err


@pytest.mark.parametrize("module", [ImageNetLTDataLoader, PlacesLTDataLoader])
def test_tool_lists_read_back_as_generated(written, lists, module):
    out = written[0]
    from_files = module(**list_module_args(lists, test_distribution_txt=str(out / "small_{name}.txt")))
    generated = module(**list_module_args(lists))
    read, made = from_files.test_distributions(), generated.test_distributions()
    assert list(read) == list(made)
    for name in made:
        assert sorted(read[name].tolist()) == sorted(made[name].tolist()), name
    head = int(np.argmax(TRAIN_COUNTS))
    forward5 = np.bincount(from_files.test_set.targets[read["forward5"]], minlength=5)
    assert forward5[from_files.label_map[head]] == 4  # the most frequent training class keeps img_max


def test_distribution_list_errors(tmp_path, lists):
    out = tmp_path / "dist"
    out.mkdir()
    pattern = str(out / "d_{name}.txt")
    with pytest.raises(UserError, match="d_forward5.txt does not exist; write the lists with"):
        ImageNetLTDataLoader(**list_module_args(lists, test_distribution_txt=pattern)).test_distributions()
    test_lines = lists["test_txt"].read_text().splitlines()
    for name in ("forward5", "forward2", "uniform", "backward2", "backward5"):
        (out / f"d_{name}.txt").write_text("\n".join(test_lines[:3]) + "\n")
    (out / "d_forward2.txt").write_text(test_lines[0] + "\nval/elsewhere.jpg 1\n")
    with pytest.raises(UserError, match=r"d_forward2.txt, line 2: image val/elsewhere.jpg is not in the test list"):
        ImageNetLTDataLoader(**list_module_args(lists, test_distribution_txt=pattern)).test_distributions()
    path, label = test_lines[0].split()
    (out / "d_forward2.txt").write_text(f"{path} {(int(label) + 1) % 5}\n")
    with pytest.raises(UserError, match=r"d_forward2.txt, line 1: label .* differs from the test list"):
        ImageNetLTDataLoader(**list_module_args(lists, test_distribution_txt=pattern)).test_distributions()


def test_data_tools_refuse_bad_arguments_in_one_line(tmp_path, lists, capfd):
    """Both data_txt tools: a bad count, a missing or foreign input, an output under a file: exit 2,
    one line naming the option, nothing written."""
    from tests.helpers import one_line_error, run_entry
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "batches.meta").write_text("not a pickle")
    lists_args = ["--train", str(lists["train_txt"]), "--test", str(lists["test_txt"])]
    cases = [
        ("data_txt/make_test_distributions.py", [*lists_args, "--out", tmp_path / "d", "--img_max", "-3"], "--img_max"),
        ("data_txt/make_test_distributions.py", [*lists_args, "--out", tmp_path / "d", "--ratios", "0"], "--ratios"),
        ("data_txt/make_test_distributions.py", [*lists_args, "--out", tmp_path / "d", "--seed", "-1"], "--seed"),
        ("data_txt/make_test_distributions.py", [*lists_args, "--out", a_file], "is not a folder"),
        ("data_txt/make_cifar_folder.py", ["--cifar", tmp_path / "nothing", "--out", tmp_path / "o"], "--cifar"),
        ("data_txt/make_cifar_folder.py", ["--cifar", a_file, "--out", tmp_path / "o"], "is not a folder"),
        ("data_txt/make_cifar_folder.py", ["--cifar", foreign, "--out", tmp_path / "o"], "batches.meta"),
        ("data_txt/make_cifar_folder.py", ["--cifar", foreign, "--out", tmp_path / "o", "--imbalance", "0"],
         "--imbalance"),
        ("data_txt/make_cifar_folder.py", ["--cifar", foreign, "--out", tmp_path / "o", "--val_per_class", "-1"],
         "--val_per_class"),
        ("data_txt/make_cifar_folder.py", ["--cifar", foreign, "--out", a_file / "sub"], "is not a folder"),
    ]
    for script, argv, fragment in cases:
        one_line_error(*run_entry(script, argv, capfd)[::2], fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "foreign"]
