"""torchvision transform pipelines built from config values (docs/methods.md#training-sets, #list-datasets,
#test-time-aggregation)."""
from torchvision import transforms as T

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the release normalises CIFAR-100 with these too (docs/methods.md#training-sets)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def normalize(mean, std):
    return T.Normalize(mean=list(mean), std=list(std))


def small_image_train(size, padding, flip, rotation, mean, std):
    """CIFAR-style training augmentation: RandomCrop(size, padding), flip, rotation, normalise."""
    ops = [T.RandomCrop(size, padding=padding)] if padding else []
    if flip:
        ops.append(T.RandomHorizontalFlip())
    if rotation:
        ops.append(T.RandomRotation(rotation))
    ops += [T.ToTensor(), normalize(mean, std)]
    return T.Compose(ops)


def small_image_test(mean, std):
    return T.Compose([T.ToTensor(), normalize(mean, std)])


def small_image_two_view_sizes(size):
    """(crop padding, blur kernel size) of the small-image two-view augmentation: (4, 3) at 32 px."""
    return max(1, size // 8), _odd(size // 10)


def check_probability(name, p):
    """A probability argument of an augmentation (``blur_p``) must lie in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name} {p!r}: expected a probability in [0, 1]")
    return float(p)


def small_image_two_view(size, mean, std, blur_p=0.2, flip=True):
    """Strong augmentation of test-time aggregation (CIFAR; docs/methods.md#test-time-aggregation): crop, jitter, grey,
    blur, flip. data_loader/tensor_two_view.py is the same on batches of a device tensor."""
    check_probability("blur_p", blur_p)
    padding, kernel = small_image_two_view_sizes(size)
    ops = [T.RandomCrop(size, padding=padding),
           T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
           T.RandomGrayscale(p=0.2),
           T.RandomApply([T.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=blur_p)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), normalize(mean, std)]
    return T.Compose(ops)


def _odd(k):
    k = max(3, int(k))
    return k if k % 2 else k + 1


# -- 224-px list datasets (docs/methods.md#list-datasets, #test-time-aggregation) ---------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


def large_image_train(size, mean, std, color_jitter=True):
    """RandomResizedCrop(size), flip, ColorJitter(0.4, 0.4, 0.4, 0) unless disabled (iNat), normalise."""
    ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    if color_jitter:
        ops.append(T.ColorJitter(0.4, 0.4, 0.4, 0))
    ops += [T.ToTensor(), normalize(mean, std)]
    return T.Compose(ops)


MAX_ASPECT = 16


class CapAspect:
    """Crop a PIL image's longer side around its centre to at most ``max_ratio`` times its shorter
    side; an image within the ratio passes unchanged. Before Resize(shorter side) + CenterCrop, it
    keeps what the crop keeps, but a 20000 x 1 image is no longer resized to 5,120,000 x 256 (3.9 GB)."""

    def __init__(self, max_ratio=MAX_ASPECT):
        self.max_ratio = max_ratio

    def __call__(self, img):
        w, h = img.size
        cap = self.max_ratio * min(w, h)
        if max(w, h) <= cap:
            return img
        if w > h:
            left = (w - cap) // 2
            return img.crop((left, 0, left + cap, h))
        top = (h - cap) // 2
        return img.crop((0, top, w, top + cap))

    def __repr__(self):
        return f"{type(self).__name__}(max_ratio={self.max_ratio})"


def large_image_test(size, resize, mean, std):
    """Resize(resize) (256 at 224 px) + CenterCrop(size), normalise; an image longer than 16 times
    its width (or wider than 16 times its height) is first cropped to that around its centre (CapAspect)."""
    return T.Compose([CapAspect(), T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize(mean, std)])


def large_image_two_view(size, mean, std, crop_scale=(0.2, 1.0), blur_p=0.5):
    """Strong augmentation of test-time aggregation at 224 px (docs/methods.md#test-time-aggregation):
    RandomResizedCrop(scale (0.2, 1)), jitter p 0.8, grey p 0.2, Gaussian blur sigma 0.1..2 with p 0.5, flip."""
    check_probability("blur_p", blur_p)
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(crop_scale)),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                      T.RandomGrayscale(p=0.2),
                      T.RandomApply([T.GaussianBlur(kernel_size=_odd(size // 10), sigma=(0.1, 2.0))], p=blur_p),
                      T.RandomHorizontalFlip(),
                      T.ToTensor(), normalize(mean, std)])
