"""Small generated image folders (JPEG and PNG, several sizes) for the folder data module's tests,
and images that are not what they seem."""
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import ROOT

CLASSES = ("cat", "dog", "owl")


def write_image(path, rng, size, fmt):
    """A random RGB image whose mean colour depends on nothing (noise): the model need not learn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.randint(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_folder(root, counts, split="train", classes=CLASSES, seed=0, nested=False):
    """``root/split/<class>/NN.{png,jpg}``: ``counts[k]`` images of class k, alternating PNG and
    JPEG, sizes between 20 and 48 pixels (one in a subfolder when ``nested``)."""
    rng = np.random.RandomState(seed)
    for name, n in zip(classes, counts):
        for i in range(n):
            fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[i % 2]
            sub = "deeper/" if nested and i == 0 else ""
            size = (int(rng.randint(20, 49)), int(rng.randint(20, 49)))
            write_image(Path(root) / split / name / f"{sub}{i:02d}.{ext}", rng, size, fmt)
    return Path(root)


def folder_config(data_dir, save_dir, num_classes=None, epochs=1, **data_args):
    """The shipped folder recipe shrunk to seconds: 16 px, batch 8, one epoch (``num_classes``: as
    shipped, none; the model takes the count of class folders)."""
    config = json.loads((ROOT / "configs" / "config_folder_tade.json").read_text())
    config["name"] = "folder"
    if num_classes is not None:
        config["arch"]["args"]["num_classes"] = num_classes
    config["data_loader"]["args"].update(data_dir=str(data_dir), image_size=16, batch_size=8, num_workers=0,
                                         **data_args)
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), save_period=0, tensorboard=False)
    return config


def write_undecodable_tiff(path):
    """A TIFF (whatever ``path`` is named) whose StripOffsets entry has the field type ASCII: Pillow
    raises TypeError on it, not OSError."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 273:  # StripOffsets
            data[entry + 2:entry + 4] = struct.pack("<H", 2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_odd_images(folder, size=(12, 8)):
    """Valid images of every odd kind, named like images (``{name: file}``): grey, grey with alpha,
    16-bit grey, 32-bit integer grey (a TIFF named .png), palette with transparency, RGBA, CMYK JPEG,
    1-bit, an EXIF-rotated JPEG (stored ``size``, shown turned by 90 degrees), a 2-frame GIF named .png
    and 2-page TIFF named .png, 1 x 1, upper-case extensions, WebP, BMP, and names with a space, a
    comma and non-ASCII letters."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rgb = np.random.RandomState(0).randint(0, 256, (h, w, 3), np.uint8)
    base = Image.fromarray(rgb)
    ramp = np.linspace(0, 65535, w * h).reshape(h, w).astype(np.uint16)
    rotated = Image.new("RGB", size, (255, 255, 255))  # stored: left half white, right half black
    rotated.paste((0, 0, 0), (w // 2, 0, w, h))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": shown with the white half on top
    frames = [Image.new("RGB", size, c) for c in ((200, 10, 10), (10, 200, 10))]
    files = {"L": ("grey.png", base.convert("L"), {}), "LA": ("grey_alpha.png", base.convert("LA"), {}),
             "I;16": ("sixteen.png", Image.fromarray(ramp), {}),
             "I": ("int32.png", Image.fromarray(ramp.astype(np.int32)), {"format": "TIFF"}),
             "P": ("palette.png", base.convert("P"), {"transparency": 0}),
             "RGBA": ("rgba.PNG", base.convert("RGBA"), {}), "CMYK": ("cmyk.jpg", base.convert("CMYK"), {}),
             "1": ("one_bit.png", base.convert("1"), {}), "EXIF": ("rotated.JPG", rotated, {"exif": exif}),
             "GIF": ("animated.png", frames[0], {"format": "GIF", "save_all": True, "append_images": frames[1:]}),
             "TIFF": ("pages.png", frames[0], {"format": "TIFF", "save_all": True, "append_images": frames[1:]}),
             "1x1": ("dot.bmp", Image.new("RGB", (1, 1), (1, 2, 3)), {}), "WEBP": ("x.webp", base, {}),
             "names": ("café, a b.jpeg", base, {})}
    for name, image, options in files.values():
        image.save(folder / name, **options)
    return {kind: folder / name for kind, (name, _, _) in files.items()}
