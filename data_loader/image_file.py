"""One image file -> one 8-bit RGB PIL image: the rule every image path uses (image folders, list
files, ``test_train.py --images``; docs/own_data.md#image-files).

- An EXIF (or TIFF) orientation tag is applied: the image is read as a viewer shows it. A tag that
  cannot be parsed counts as no tag.
- A file of several frames (animated GIF, multi-page TIFF) gives its first frame.
- Grey, palette, CMYK and 1-bit images are converted to RGB by Pillow; an alpha channel is dropped
  (the colour stored under a transparent pixel is kept).
- 16-bit grey (``I;16``, and Pillow's 32-bit integer mode ``I``, read as 16-bit) is scaled to 8 bits:
  ``round(v * 255 / 65535)``, values outside 0..65535 clipped. Converting it as Pillow does would clip
  every value above 255 to white.
- A floating-point image (mode ``F``) has no range to map to 8 bits: it is refused (ValueError).

Errors are whatever Pillow or the OS raises; :func:`unreadable_reason` says in a few words why.
"""
import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.safe_write import not_regular, open_readable

ORIENTATION = 0x0112  # EXIF / TIFF tag
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
RULE = "upright by orientation tag, first frame, 16-bit grey scaled, mode F refused"  # in validation cache keys


def orientation(img):
    try:
        return int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no orientation, not an unreadable image
        return 1


def to_rgb(img):
    """``img`` as 8-bit RGB by the module's rule."""
    if img.mode in SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.float64)
        grey = np.rint(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        raise ValueError("a floating-point image (mode F) has no fixed range to map to 8-bit colour; save it as an "
                         "8- or 16-bit image")
    return img.convert("RGB")


def read_rgb(path):
    """The image at ``path`` (a regular file, through links; a FIFO is refused, never waited on) as
    8-bit RGB, upright."""
    with open_readable(path) as f, Image.open(f) as img:
        turn = TRANSPOSE.get(orientation(img))
        rgb = to_rgb(img)
    return rgb.transpose(turn) if turn is not None else rgb


def unreadable_reason(path, error):
    """Why ``read_rgb(path)`` raised ``error``, in a few words for a one-line message."""
    if isinstance(error, OSError) and not isinstance(error, UnidentifiedImageError):
        what = not_regular(path)
        if what is not None:
            return f"it {what}"
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can identify (empty, text, or another format)"
    return f"{type(error).__name__}: {error}"
