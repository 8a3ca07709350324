import numpy as np
import pytest

from utils.long_tail import img_num_per_cls, select_per_class, shot_masks
from tests.helpers import write_cifar100


@pytest.mark.parametrize("imb,total,groups", [(0.01, 10847, (35, 35, 30)), (0.02, 12608, (41, 41, 18)),
                                              (0.1, 19573, (69, 31, 0))])
def test_cifar100_lt_counts_and_shot_groups(imb, total, groups):
    counts = img_num_per_cls(500, 100, imb)
    assert sum(counts) == total
    masks = shot_masks(counts)
    assert (masks["many"].sum(), masks["medium"].sum(), masks["few"].sum()) == groups


def test_cifar100_ir100_first_and_last_counts():
    counts = img_num_per_cls(500, 100, 0.01)
    assert counts[:5] == [500, 477, 455, 434, 415]
    assert counts[-1] == 5


def test_cifar10_counts():
    counts = img_num_per_cls(5000, 10, 0.01)
    assert counts[0] == 5000 and counts[-1] == 50 and sum(counts) == 12406


def release_selection(targets, counts):
    """The reference release's rule, verbatim in spirit: global seed 0 then np.random.shuffle."""
    np.random.seed(0)
    out = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out)


def test_selection_equals_seed0_rule_without_touching_global_rng(tmp_path):
    import pickle
    write_cifar100(tmp_path, train_per_class=12, test_per_class=2, seed=3)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        targets = np.asarray(pickle.load(f, encoding="latin1")["fine_labels"])
    counts = img_num_per_cls(12, 100, 0.1)
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    ours = select_per_class(targets, counts, seed=0)
    assert np.array_equal(np.random.get_state()[1], before), "global numpy RNG was touched"
    assert np.array_equal(ours, release_selection(targets, counts))


def test_data_module_reads_generated_cifar100(tmp_path):
    from data_loader import CIFAR100LTDataLoader
    write_cifar100(tmp_path, train_per_class=10, test_per_class=3)
    data = CIFAR100LTDataLoader(str(tmp_path), imb_factor=0.1, img_max=10, batch_size=8)
    assert data.cls_num_list == img_num_per_cls(10, 100, 0.1)
    assert len(data.test_set) == 300
    x, y = data.train_set[0]
    assert tuple(x.shape) == (3, 32, 32)


def test_imb_factor_one_gives_full_balanced_set(tmp_path):
    from data_loader import CIFAR100LTDataLoader
    write_cifar100(tmp_path, train_per_class=6, test_per_class=1)
    data = CIFAR100LTDataLoader(str(tmp_path), imb_factor=1, img_max=6, batch_size=8)
    assert data.cls_num_list == [6] * 100 and len(data.train_set) == 600


def test_digits_lt_is_real_and_long_tailed():
    from data_loader import DigitsLTDataLoader
    data = DigitsLTDataLoader(imb_factor=0.1)
    assert data.cls_num_list == img_num_per_cls(120, 10, 0.1)
    assert np.bincount(data.test_set.targets).tolist() == [50] * 10
