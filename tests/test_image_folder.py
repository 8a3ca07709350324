"""The image-folder data module (data_loader/image_folder.py): layout, class names, the held-out
split, the optional long tail, imbalanced test folders, and layout errors, on generated JPEG/PNG
folders."""
import os
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


# -- odd image files (data_loader/image_file.py, the scan's checks) ----------------------------------------------------
def test_odd_images_read_as_upright_8_bit_rgb(tmp_path, monkeypatch):
    """Every valid odd kind is RGB, 8 bits: 16-bit grey scaled (not clipped to white), the EXIF
    orientation applied, the first frame of a GIF or TIFF; a float image, a decompression bomb and
    files that are no image are one line naming the file and why."""
    from PIL import Image

    from data_loader.image_file import read_rgb
    from data_loader.list_file import ListFile
    from data_loader.list_lt import ListImageDataset, UnreadableImageError
    from tests.image_folders import write_odd_images
    odd = write_odd_images(tmp_path / "odd")
    for kind, path in odd.items():
        img = read_rgb(path)
        assert img.mode == "RGB", kind
        assert img.size == {"EXIF": (8, 12), "1x1": (1, 1)}.get(kind, (12, 8)), kind
    for kind in ("I;16", "I"):  # a ramp 0..65535: black to white, mid-grey in the middle
        grey = np.asarray(read_rgb(odd[kind]))[..., 0].ravel()
        assert grey[0] == 0 and grey[-1] == 255 and abs(int(grey[len(grey) // 2]) - 128) <= 2, kind
    shown = np.asarray(read_rgb(odd["EXIF"]), dtype=float)
    assert shown[:5].mean() > 200 and shown[-5:].mean() < 50  # the stored left half is on top
    assert tuple(np.asarray(read_rgb(odd["GIF"]))[0, 0]) == (200, 10, 10)  # first frame
    assert tuple(np.asarray(read_rgb(odd["TIFF"]))[0, 0]) == (200, 10, 10)

    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.png", format="TIFF")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (40, 40)).save(tmp_path / "bomb.png")
    names = ["float.png", "empty.jpg", "text.png", "bomb.png"]
    listing = ListFile("l.txt", names, np.zeros(4, np.int64), np.arange(1, 5))
    data = ListImageDataset(tmp_path, listing, listing.labels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40 // 3)  # 40 x 40 is over twice the limit
    for i, why in enumerate(["mode F", "not an image file Pillow can identify", "not an image file Pillow can identify",
                             "DecompressionBombError"]):
        with pytest.raises(UnreadableImageError) as e:
            data[i]
        message = str(e.value)
        assert f"cannot read image {tmp_path / names[i]} (l.txt, line {i + 1})" in message and why in message
        assert "\n" not in message and "BufferedReader" not in message


def test_odd_images_in_a_training_folder(tmp_path, caplog):
    """Valid odd images train like any other; files not named as images (and links to folders) are
    left out with one counted note, hidden files silently."""
    from tests.helpers import train_log
    from tests.image_folders import write_odd_images
    root = write_folder(tmp_path / "data", (2, 3), classes=("cat", "dog"))
    odd = write_odd_images(root / "train" / "cat" / "odd")
    for name in ("README.txt", "scan.tif", "clip.gif", ".DS_Store", "._00.png"):
        (root / "train" / "cat" / name).write_bytes(b"\0\1")
    (root / "train" / "dog" / "linked").symlink_to(root / "train" / "dog")  # a loop: never walked
    with train_log(caplog):
        data = module(root, validation=False)
    assert data.cls_num_list == [2 + len(odd), 3]
    notes = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(notes) == 1 and "left out 4 file(s) not named as images" in notes[0], notes
    assert all(tuple(data.train_set[i][0].shape) == (3, 16, 16) for i in range(len(data.train_set)))


@pytest.mark.parametrize("kind, fragment", [
    ("link to nothing", "is a link to nothing"), ("link loop", "is a link loop"), ("fifo", "is a FIFO"),
    ("only tif", "1 other file(s) there, e.g. 'a.tif'")])
def test_files_that_are_no_image_stop_the_scan_in_one_line(tmp_path, kind, fragment):
    """Refused when the folder is read (before any training), naming the file: nothing waits on a FIFO."""
    root = write_folder(tmp_path / "data", (2, 2), classes=("cat", "dog"))
    bad = root / "train" / "dog" / "bad.png"
    if kind == "link to nothing":
        bad.symlink_to(tmp_path / "nowhere.png")
    elif kind == "link loop":
        bad.symlink_to(bad)
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        (root / "train" / "emu").mkdir()
        (root / "train" / "emu" / "a.tif").write_bytes(b"II*\0")
    with pytest.raises(UserError) as e:
        module(root)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if kind != "only tif":
        assert str(e.value).startswith(f"{bad} ")


def test_an_undecodable_image_of_a_folder_is_named_by_its_path_alone(tmp_path):
    """Found when first loaded: the message names the file and why, and no "line" (a folder's scan has none)."""
    from data_loader.list_lt import UnreadableImageError
    root = write_folder(tmp_path / "data", (2, 2), classes=("cat", "dog"))
    bad = root / "train" / "dog" / "00.png"
    bad.write_text("not an image")
    data = module(root, validation=False)
    index = next(i for i in range(len(data.train_set)) if data.train_set.path(i) == str(bad))
    with pytest.raises(UnreadableImageError) as e:
        data.train_set[index]
    assert str(e.value) == (f"cannot read image {bad}: not an image file Pillow can identify (empty, text, or "
                            "another format)")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_stops_the_scan(tmp_path):
    root = write_folder(tmp_path / "data", (2, 2), classes=("cat", "dog"))
    (root / "train" / "dog" / "00.png").chmod(0)
    with pytest.raises(UserError, match=r"dog/00.png is not readable \(permissions\)"):
        module(root)


def test_an_extreme_aspect_is_cropped_before_the_large_test_resize():
    """Resize(256) of a 20000 x 1 image alone would be 5,120,000 x 256 pixels; CapAspect keeps the
    centre, 16 times the short side, and leaves every other image as it is."""
    from PIL import Image

    from data_loader import transforms as tf
    wide = Image.new("RGB", (20000, 1))
    assert tf.CapAspect()(wide).size == (16, 1)
    assert tf.CapAspect()(wide.transpose(Image.Transpose.ROTATE_90)).size == (1, 16)
    photo = Image.new("RGB", (640, 40))
    assert tf.CapAspect()(photo) is photo
    test = tf.large_image_test(224, 256, tf.IMAGENET_MEAN, tf.IMAGENET_STD)
    assert tuple(test(wide).shape) == (3, 224, 224)
