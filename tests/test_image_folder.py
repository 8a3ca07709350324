"""The image-folder data module (data_loader/image_folder.py): layout, class names, the held-out
split, the optional long tail, imbalanced test folders, and layout errors, on generated JPEG/PNG
folders."""
import shutil

import numpy as np
import pytest

from data_loader.image_folder import DEFAULT_VALIDATION, SPLIT_FILE, ImageFolderLTDataModule, carve_validation
from data_loader.list_file import read_list
from tests.image_folders import CLASSES, folder_config, write_folder
from utils.errors import UserError
from utils.long_tail import img_num_per_cls


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ 30/12/6 (one image in a subfolder), test/ 5 per class; no val/."""
    root = write_folder(tmp_path_factory.mktemp("folder"), (30, 12, 6), nested=True)
    return write_folder(root, (5, 5, 5), split="test", seed=1)


def module(root, **kw):
    return ImageFolderLTDataModule(str(root), **{"image_size": 16, "batch_size": 8, **kw})


def test_classes_images_and_sizes(folder):
    data = module(folder)
    assert data.class_names == sorted(CLASSES) and data.num_classes == 3
    assert data.cls_num_list == [30 - 3, 12 - 1, 6]  # held out: floor(0.1 n) capped, owl too small to give one
    assert any("deeper" in p for p in data.train_list.images + data.val_list.images)  # found below the class folder
    x, y = data.test_set[0]
    assert tuple(x.shape) == (3, 16, 16) and y == 0  # any input size -> image_size
    kinds = {p.rsplit(".", 1)[1] for p in data.train_list.images}
    assert kinds == {"png", "jpg"}
    batch, targets = next(iter(data.train_loader(0, seed=1)))
    assert tuple(batch.shape[1:]) == (3, 16, 16) and len(targets) == 8


def test_held_out_split(folder):
    data = module(folder)
    info = data.validation_info
    assert info["counts"] == [3, 1, 0] and info["classes_without_validation"] == ["owl"]
    train, val = set(data.train_list.images), set(data.val_list.images)
    assert not train & val and len(train) + len(val) == 48
    assert not (train | val) & set(data.test_list.images)
    # the file for the run folder lists exactly the held-out images, in the list-file format
    text = data.split_files()[SPLIT_FILE]
    lines = [line.rsplit(" ", 1) for line in text.splitlines()]
    assert [p for p, _ in lines] == data.val_list.images and [int(k) for _, k in lines] == data.val_list.labels.tolist()
    # seeded: the same config gives the same split, another seed another one
    assert module(folder).val_list.images == data.val_list.images
    other = module(folder, validation={"seed": 3, "fraction": 0.5, "max_per_class": 100})
    assert other.val_list.images != data.val_list.images
    assert other.validation_info["counts"] == [15, 6, 1]  # half, min_train 5 left in owl (6 - 5 = 1)
    assert module(folder, validation=False).validation_set is None


def test_carve_rule():
    labels = np.repeat(np.arange(4), [200, 40, 7, 3])
    held, counts, whole = carve_validation(labels, 4, fraction=0.1, max_per_class=15, min_train=5, seed=0)
    assert counts == [15, 4, 0, 0] and whole == [2, 3]
    for c, n in enumerate(counts):
        assert (labels[held] == c).sum() == n


def test_val_folder_is_used_and_checked(folder, tmp_path):
    root = tmp_path / "with_val"
    shutil.copytree(folder, root)
    write_folder(root, (2, 2, 2), split="val", seed=2)
    data = module(root)
    assert data.validation_info["counts"] == [2, 2, 2] and data.split_files() == {}
    assert data.cls_num_list == [30, 12, 6]  # nothing carved from train/
    write_folder(root, (1,), split="val", classes=("emu",), seed=3)
    with pytest.raises(UserError, match=r"val/emu.*not a class of train/"):
        module(root)


def test_imbalance_makes_a_long_tail(tmp_path):
    root = write_folder(tmp_path, (20, 20, 20))
    data = module(root, imbalance=10, validation=False)
    assert data.cls_num_list == img_num_per_cls(20, 3, 0.1)
    assert module(root, imbalance=10, validation=False).train_list.images == data.train_list.images  # seed 0
    with pytest.raises(UserError, match="imbalance"):
        module(write_folder(tmp_path / "tail", (20, 3, 20)), imbalance=2, validation=False)


def test_imbalanced_test_folder(tmp_path):
    root = write_folder(tmp_path, (12, 8, 6))
    write_folder(root, (9, 6, 4), split="test", seed=1)
    data = module(root, validation=False)
    assert not data.test_info["balanced"] and "built from what it holds" in data.test_info["note"]
    dists = data.test_distributions()
    targets = data.test_set.targets
    assert np.bincount(targets[dists["uniform"]], minlength=3).tolist() == [4, 4, 4]
    assert np.bincount(targets[dists["forward50"]], minlength=3).tolist() == img_num_per_cls(4, 3, 1 / 50)


def test_no_test_folder_is_named(tmp_path):
    data = module(write_folder(tmp_path, (12, 8)), validation=False)
    with pytest.raises(UserError, match="no test set"):
        data.test_distributions()


@pytest.mark.parametrize("case, message", [
    ("one class", r"train: found 1 class folder\(s\); expected at least two"),
    ("empty class", r"train/dog: class folder holds no image"),
    ("unknown test class", r"test/emu: class 'emu' is not a class of train/"),
    ("no train", r"train is not a folder"),
])
def test_layout_errors_name_the_folder(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "one class":
        write_folder(root, (4,), classes=("cat",))
    elif case == "empty class":
        write_folder(root, (4, 0), classes=("cat", "dog"))
        (root / "train" / "dog").mkdir(parents=True, exist_ok=True)
        (root / "train" / "dog" / "notes.txt").write_text("not an image")
    elif case == "unknown test class":
        write_folder(root, (4, 4), classes=("cat", "dog"))
        write_folder(root, (1,), split="test", classes=("emu",))
    else:
        root.mkdir()
    with pytest.raises(UserError, match=message):
        module(root)


def test_bad_validation_settings(folder):
    with pytest.raises(UserError, match=r"validation: unknown key\(s\) per_class"):
        module(folder, validation={"per_class": 3})
    with pytest.raises(UserError, match=r"validation.fraction 1.5"):
        module(folder, validation={"fraction": 1.5})
    assert set(DEFAULT_VALIDATION) == {"fraction", "max_per_class", "min_train", "seed"}


def test_split_file_reads_back_as_a_list(folder, tmp_path):
    data = module(folder)
    path = tmp_path / SPLIT_FILE
    path.write_text(data.split_files()[SPLIT_FILE])
    listing = read_list(path, data.num_classes)
    assert listing.images == data.val_list.images


def test_large_style_for_photographs(folder):
    data = module(folder, image_size=40, style="large")
    x, _ = data.test_set[0]
    assert tuple(x.shape) == (3, 40, 40)
    view = data.two_view_transform()(_pil(folder))
    assert tuple(view.shape) == (3, 40, 40)
    assert tuple(module(folder).two_view_transform()(_pil(folder)).shape) == (3, 16, 16)
    with pytest.raises(UserError, match="style"):
        module(folder, style="medium")


def _pil(folder):
    from PIL import Image
    return Image.open(next((folder / "test" / "cat").iterdir())).convert("RGB")


def test_the_class_count_comes_from_the_folders_and_a_wrong_one_is_refused(folder, tmp_path):
    """The shipped folder config has no ``arch.args.num_classes``: the model takes the number of class
    folders, written into the run's config; a given number that differs is refused with the right one."""
    from trainer.build import build_data, settle_class_count
    from utils.parse_config import ConfigParser
    raw = folder_config(folder, tmp_path)
    assert "num_classes" not in raw["arch"]["args"]
    config = ConfigParser(raw, "c.json")
    data = build_data(config)
    settle_class_count(config, data)
    assert config.config["arch"]["args"]["num_classes"] == 3
    config.config["arch"]["args"]["num_classes"] = 10
    with pytest.raises(UserError, match="arch.args.num_classes is 10, but ImageFolderLTDataModule has 3 classes; "
                                        "expected arch.args.num_classes 3"):
        settle_class_count(config, data)


def test_the_folder_recipe_drops_a_tiny_last_batch(folder, tmp_path):
    """A few hundred images make a few batches an epoch; the last, partial one (2 images in batch norm
    for 386 images at batch 128) is left out, and a set that cannot fill one batch is refused."""
    from trainer.build import build_data
    from utils.parse_config import ConfigParser
    raw = folder_config(folder, tmp_path)  # batch 8 on 44 training images: 5 full batches, 4 images left out
    assert raw["data_loader"]["args"]["drop_last"] is True
    data = build_data(ConfigParser(raw, "c.json"))
    assert [len(y) for _, y in data.train_loader(0, seed=1)] == [8] * (len(data.train_set) // 8)
    raw["data_loader"]["args"]["batch_size"] = 64
    with pytest.raises(UserError, match="the 44 training images do not fill one batch of 64"):
        build_data(ConfigParser(raw, "c.json")).rank_batch_size(1)
