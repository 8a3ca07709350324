"""List-based datasets (ImageNet-LT, Places-LT, iNat; docs/methods.md#list-datasets) on generated JPEGs and lists."""

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from data_loader import ImageNetLTDataLoader, INaturalistDataLoader, PlacesLTDataLoader
from data_loader.list_lt import UnreadableImageError
from data_loader.transforms import CapAspect
from utils.long_tail import img_num_per_cls
from tests.helpers import train_log
from tests.list_data import TRAIN_COUNTS, list_module_args, write_list_dataset
from utils.errors import UserError


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_list_dataset(tmp_path_factory.mktemp("lists"))


def test_loading_counts_and_transforms(lists):
    data = ImageNetLTDataLoader(**list_module_args(lists))
    assert data.cls_num_list == list(TRAIN_COUNTS)
    assert len(data.train_set) == sum(TRAIN_COUNTS) and len(data.test_set) == 4 * len(TRAIN_COUNTS)
    x, y = data.test_set[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == int(lists["test_txt"].read_text().split()[1])
    xb, yb = next(iter(data.train_loader(epoch=0, seed=1)))
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8,)
    ops = [type(t) for t in data.train_set.transform.transforms]
    assert ops == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.ToTensor, T.Normalize]
    test_ops = data.test_set.transform.transforms
    assert (test_ops[1].size, test_ops[2].size) == (37, (32, 32))  # Resize(256)+CenterCrop(224), scaled
    assert isinstance(test_ops[0], CapAspect) and test_ops[0].max_ratio == 16  # extreme aspects cropped first


def test_published_resize_and_inat_transform(lists):
    data = INaturalistDataLoader(**list_module_args(lists, image_size=224, test_ratios=None))
    assert data.ratios == (3, 2)
    assert data.test_set.transform.transforms[1].size == 256
    train_ops = data.train_set.transform.transforms
    assert T.ColorJitter not in [type(t) for t in train_ops]
    assert tuple(train_ops[-1].mean) == (0.466, 0.471, 0.380) and tuple(train_ops[-1].std) == (0.195, 0.194, 0.192)
    assert list(data.test_distributions()) == ["forward3", "forward2", "uniform", "backward2", "backward3"]


def test_places_relabels_by_training_frequency(lists, caplog):
    with train_log(caplog):
        data = PlacesLTDataLoader(**list_module_args(lists))
    order = np.argsort(-np.asarray(TRAIN_COUNTS), kind="stable")  # old labels, most frequent first
    assert data.cls_num_list == sorted(TRAIN_COUNTS, reverse=True)
    assert data.label_map[order].tolist() == list(range(len(TRAIN_COUNTS)))
    # the same map on the test list: every test image keeps its class, under the new label
    old_test = [int(line.split()[1]) for line in lists["test_txt"].read_text().splitlines()]
    assert data.test_set.targets.tolist() == data.label_map[old_test].tolist()
    assert "(new:old) " + " ".join(f"{n}:{o}" for n, o in enumerate(order)) in caplog.text


def test_generated_distributions_follow_training_rank(lists):
    data = ImageNetLTDataLoader(**list_module_args(lists))
    dists = data.test_distributions()
    assert list(dists) == ["forward5", "forward2", "uniform", "backward2", "backward5"]
    rank = np.argsort(np.argsort(-np.asarray(TRAIN_COUNTS), kind="stable"), kind="stable")
    for name, idx in dists.items():
        counts = np.bincount(data.test_set.targets[idx], minlength=5)
        if name == "uniform":
            assert counts.tolist() == [4] * 5
            continue
        by_rank = img_num_per_cls(4, 5, 1 / int(name[-1]), reverse=name.startswith("backward"))
        assert counts.tolist() == [by_rank[r] for r in rank], name


def test_persistent_workers_give_the_same_batches(lists):
    """Augmentation is seeded per image and epoch: 0 workers, 2 persistent workers, a fresh module
    (a resumed run) all see the same batches; another epoch sees other ones."""
    def batches(num_workers, epochs):
        data = ImageNetLTDataLoader(**list_module_args(lists, num_workers=num_workers, persistent_workers=True))
        out = []
        for epoch in epochs:
            loader = data.train_loader(epoch=epoch, seed=3)
            out.append(torch.cat([x for x, _ in loader]))
        return out

    a0, a1 = batches(0, [0, 1])
    b0, b1 = batches(2, [0, 1])
    (c1,) = batches(0, [1])
    assert torch.equal(a0, b0) and torch.equal(a1, b1) and torch.equal(a1, c1)
    assert not torch.equal(a0, a1)


# -- bad inputs ---------------------------------------------------------------------------------
def _bad_list(tmp_path, lists, text):
    bad = tmp_path / "bad.txt"
    good = lists["train_txt"].read_text().splitlines()
    bad.write_text("\n".join(good[:3] + [text] + good[3:]) + "\n")
    return bad


@pytest.mark.parametrize("text, fragment", [
    ("train/c0/0.jpg", "line 4: expected 'relative/path label'"),
    ("train/c0/0.jpg one", "line 4: label 'one' is not an integer"),
    ("train/c0/0.jpg 5", "line 4: label 5 out of range (expected 0..4)"),
    ("train/c0/0.jpg -1", "line 4: label -1 out of range"),
])
def test_malformed_lines_name_file_and_line(tmp_path, lists, text, fragment):
    bad = _bad_list(tmp_path, lists, text)
    with pytest.raises(UserError) as e:
        ImageNetLTDataLoader(**list_module_args(lists, train_txt=str(bad)))
    assert str(bad) in str(e.value) and fragment in str(e.value)


def test_missing_images_reported_once_with_a_count(tmp_path, lists):
    lines = [f"train/none/{i}.jpg 1" for i in range(2000)]
    bad = tmp_path / "missing.txt"
    bad.write_text(lists["train_txt"].read_text() + "\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        ImageNetLTDataLoader(**list_module_args(lists, train_txt=str(bad)))
    msg = str(e.value)
    first = sum(TRAIN_COUNTS) + 1
    assert f"{bad}, line {first}: image" in msg and "train/none/0.jpg" in msg
    assert f"2000 of {first + 1999} listed images missing" in msg and "train/none/1.jpg" not in msg and "\n" not in msg


@pytest.mark.parametrize("entry, what", [("train/c0", "is a folder"), ("link.jpg", "is a link to nothing"),
                                         ("fifo.jpg", "is a FIFO")])
def test_a_listed_entry_that_is_no_file_says_what_it_is(tmp_path, lists, entry, what):
    import os
    data_dir = lists["data_dir"]
    (data_dir / "link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(data_dir / "fifo.jpg")
    try:
        bad = _bad_list(tmp_path, lists, f"{entry} 1")
        with pytest.raises(UserError) as e:
            ImageNetLTDataLoader(**list_module_args(lists, train_txt=str(bad)))
        assert f"line 4: image {data_dir / entry} {what} (1 of" in str(e.value)
    finally:
        (data_dir / "link.jpg").unlink()
        (data_dir / "fifo.jpg").unlink()


def test_unreadable_image_named_when_loaded(tmp_path, lists):
    data = ImageNetLTDataLoader(**list_module_args(lists))
    broken = data.train_set.path(2)
    keep = open(broken, "rb").read()
    try:
        with open(broken, "wb") as f:
            f.write(b"not a jpeg")
        with pytest.raises(UnreadableImageError) as e:
            data.train_set[2]
        assert f"cannot read image {broken} ({lists['train_txt']}, line 3)" in str(e.value)
    finally:
        with open(broken, "wb") as f:
            f.write(keep)


def test_worker_error_message_is_the_original_line():
    """DataLoader workers re-raise as type(e)(wrapped traceback); the message stays one line."""
    wrapped = ("Caught UnreadableImageError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
               "last):\n  File \"x.py\", line 1, in f\ndata_loader.list_lt.UnreadableImageError: cannot read image "
               "/d/a.jpg (l.txt, line 7): OSError: broken data stream")
    expected = "cannot read image /d/a.jpg (l.txt, line 7): OSError: broken data stream"
    assert str(UnreadableImageError(wrapped)) == expected


def test_missing_list_and_folder(tmp_path, lists):
    with pytest.raises(UserError, match="test list file .*nope.txt does not exist"):
        ImageNetLTDataLoader(**list_module_args(lists, test_txt=str(tmp_path / "nope.txt")))
    with pytest.raises(UserError, match="data_dir .* is not a folder"):
        ImageNetLTDataLoader(**list_module_args(lists, data_dir=str(tmp_path / "nowhere")))


def test_text_files_a_windows_editor_wrote_read_as_written(tmp_path):
    """A UTF-8 byte-order mark and CRLF line ends, as Notepad saves: a list file, an --images list and
    a config read as without them (the mark is no part of the first path or of the JSON)."""
    from PIL import Image

    from data_loader.list_file import read_list
    from trainer.unlabeled import image_paths
    from utils.parse_config import read_json
    bom = "\ufeff".encode("utf-8")
    (tmp_path / "train.txt").write_bytes(bom + b"a b.jpg 0\r\nc.jpg 1\r\n")
    listing = read_list(tmp_path / "train.txt", num_classes=2)
    assert listing.images == ["a b.jpg", "c.jpg"] and listing.labels.tolist() == [0, 1]
    for name in ("x.png", "y.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "new.txt").write_bytes(bom + b"x.png\r\ny.png\r\n")
    assert image_paths(str(tmp_path / "new.txt")) == [str(tmp_path / "x.png"), str(tmp_path / "y.png")]
    (tmp_path / "c.json").write_bytes(bom + b'{"name": "x"}\r\n')
    assert read_json(tmp_path / "c.json") == {"name": "x"}
