"""Running a test-time method (``trainer/test_time/``) on test sets: the loop test_train.py and the
benchmarks share. The clean expert logits of the whole test set are computed once by the caller;
each test set is an index subset of it."""
import functools
from collections import OrderedDict

import numpy as np
import torch

from base.base_model import average_experts
from base.base_test_time import NOT_FACTS, TestTimeContext, check_facts, check_result
from trainer.evaluation import distribution_metrics
from trainer.forward import collect_expert_logits
from trainer.saved_logits import SavedLogits
from trainer.validation_cache import validation_logits
from trainer.view_logits import NetworkViews
from utils.errors import UserError


class ReferenceLogits:
    """The clean logits of the training images (test transform), or of the validation split
    (``split="validation"``), computed on first use: labelled data a test-time method may use for
    calibration (unlike test labels)."""

    def __init__(self, trained, device, split="training"):
        self.trained, self.device, self.split, self.value = trained, device, split, None

    def __call__(self):
        if self.value is None:
            t = self.trained
            if self.split == "validation":
                loader, desc = t.data.validation_loader(device=self.device), "validation images"
            else:
                loader, desc = t.data.reference_loader(device=self.device), "training images (reference)"
            self.value = collect_expert_logits(t.net, loader, self.device, t.perf, desc=desc)
        return self.value


def check_method(method, trained, where):
    """Before any work: the method accepts the data module and the model's number of experts (a
    setting either cannot honour, e.g. calibration on a validation split the data lacks, is one line
    starting with ``where``)."""
    try:
        method.check(trained.data)
        method.check_experts(trained.net.num_experts)
    except ValueError as e:
        raise UserError(f"{where}: {e}")
    return method


def validation_source(trained, device):
    """A ``() -> (logits, targets)`` of the validation split, computed on first use from the cache
    beside the checkpoint (trainer/validation_cache.py) or one pass of the network; None when the
    data module has none."""
    if not getattr(trained.data, "has_validation", False):
        return None
    return functools.lru_cache(maxsize=1)(functools.partial(validation_logits, trained, device))


def train_prior(data):
    counts = torch.as_tensor(data.cls_num_list, dtype=torch.float64)
    return (counts / counts.sum()).float()


def shared_views(trained, device, indices, seed):
    """The shared views of a call over the test images ``indices`` (trainer/view_logits.py): the
    ones a saved-logits file holds, or made by the network on first use, image i's views of epoch e
    fixed by (``seed``, e, i)."""
    if isinstance(trained, SavedLogits):
        return trained.views or functools.partial(no_views, trained.path)
    data = trained.data
    needed = np.unique(np.asarray(indices, dtype=np.int64))

    def loader(view_seed, augmentation, num_workers):
        return data.seeded_two_view_loader(needed, view_seed, data.batch_size, num_workers, device, **augmentation)

    return NetworkViews(trained.net, trained.perf, device, loader, len(data.test_targets), seed,
                        data.two_view_transform, getattr(data, "pipeline", "pil"))


def no_views(path, *args, **kwargs):
    raise UserError(f"logits file {path} holds no view logits, which self-supervised aggregation needs; add them "
                    "with test.py --save_logits --save_views")


def context_for(method, trained, device, name, indices, seed, targets, reference, validation=None, views=None):
    """What ``method`` may see of test set ``indices``: the views only if it needs them (``views``:
    the call's shared views; the set's own through the network when there is one), the labels only
    if it is an oracle."""
    data = trained.data
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    ctx = TestTimeContext(num_experts=trained.net.num_experts, num_classes=data.num_classes,
                          train_prior=train_prior(data), indices=idx, name=name, seed=seed,
                          device=torch.device(device), reference_logits=reference, validation_logits=validation,
                          validation_info=getattr(data, "validation_info", None))
    if method.needs_views:
        ctx.shared_views = views if views is not None else shared_views(trained, device, indices, seed)
        if not isinstance(trained, SavedLogits):
            ctx.net, ctx.perf = trained.net, trained.perf
            ctx.two_view_loader = functools.partial(data.two_view_loader, np.asarray(indices), device=device)
    if method.uses_test_labels:
        ctx.targets = targets[idx]
    return ctx


def run_method(method, trained, clean_logits, targets, test_sets, device, seed=1, report=None, reference=None,
               validation="auto", views="auto"):
    """``{name: results row}`` of ``method`` on each test set (``{name: test-set indices}``): top-1
    and many/medium/few of the method, ``top1_average`` (the plain expert average on the same
    images, so a loss is visible), and the method's own JSON-able facts (weights, prior, ...).
    ``report(name, row, out)`` is called after each test set; ``reference`` and ``validation`` may
    share one ``ReferenceLogits`` of each split between calls ("auto": made here); so may ``views``,
    the shared views of the call ("auto": made here, on first use, over the images of all test sets,
    seeded by ``seed``). Test set d draws its own random numbers from ``seed * 1000 + d``."""
    data = trained.data
    shot_masks = data.shot_masks()
    reference = reference or ReferenceLogits(trained, device)
    validation = validation_source(trained, device) if validation == "auto" else validation
    if views == "auto" and method.needs_views:
        views = shared_views(trained, device, np.concatenate([np.asarray(i) for i in test_sets.values()]), seed)
    results = OrderedDict()
    for d, (name, indices) in enumerate(test_sets.items()):
        ctx = context_for(method, trained, device, name, indices, seed * 1000 + d, targets, reference, validation,
                          views if method.needs_views else None)
        subset_logits, subset_targets = clean_logits[ctx.indices], targets[ctx.indices]
        out = check_result(method.adapt(subset_logits, ctx), type(method).__name__, len(ctx.indices),
                           data.num_classes)
        whole = {name: np.arange(len(ctx.indices))}
        row = distribution_metrics(out["scores"].argmax(1), subset_targets, whole, data.num_classes, shot_masks)[name]
        row["top1_average"] = distribution_metrics(average_experts(subset_logits).argmax(1), subset_targets, whole,
                                                   data.num_classes, shot_masks)[name]["top1"]
        if "online_scores" in out:
            row["top1_online"] = float((out["online_scores"].argmax(1) == subset_targets).double().mean())
        row.update({k: v for k, v in out.items() if k not in NOT_FACTS})
        results[name] = row
        if report is not None:
            report(name, row, out)
    return results


def run_stream(method, trained, clean_logits, targets, batch_sizes, device, seed=0, method_seed=1, reference=None,
               validation="auto"):
    """The streaming protocol: ``{"stream_b{B}": results row}``. The whole test set comes in a
    seeded order in batches of B; the method's online adapter predicts each batch before it learns
    from it (``OnlineAdapter.step``). A method without ``online()`` cannot stream."""
    from data_loader.test_protocols import stream_batches, stream_order

    data = trained.data
    order = torch.as_tensor(stream_order(targets.numpy(), seed))
    everything = np.arange(len(targets))
    validation = validation_source(trained, device) if validation == "auto" else validation
    ctx = context_for(method, trained, device, "stream", everything, method_seed, targets,
                      reference or ReferenceLogits(trained, device), validation)
    results = OrderedDict()
    for b in batch_sizes:
        adapter = method.online(ctx)
        if adapter is None:
            raise UserError(f"--protocol streaming: {type(method).__name__} cannot run on a stream (no online form)")
        preds = torch.empty(len(targets), dtype=torch.long)
        for batch in stream_batches(order.numpy(), b):
            idx = torch.as_tensor(batch)
            scores = adapter.step(clean_logits[idx])
            if not isinstance(scores, torch.Tensor) or list(scores.shape) != [len(idx), data.num_classes]:
                shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise UserError(f"test-time method {type(method).__name__}: its online step returned scores of "
                                f"shape {shape}; expected a tensor [{len(idx)}, {data.num_classes}] (images, classes)")
            preds[idx] = scores.argmax(1)
        name = f"stream_b{b}"
        row = distribution_metrics(preds, targets, {name: everything}, data.num_classes, data.shot_masks())[name]
        row["top1_average"] = float((average_experts(clean_logits).argmax(1) == targets).double().mean())
        summary = adapter.summary()
        check_facts(summary, type(method).__name__, "its online summary()")
        row.update(summary)
        results[name] = row
    return results
