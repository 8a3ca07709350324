"""The forward pass that training-time validation, evaluation and test-time methods share: the
network in eval mode, without autograd, in the configured precision and memory layout."""
import contextlib

import torch

from base.base_model import check_outputs
from utils.errors import UserError
from utils.performance import Performance
from utils.progress import progress


def network_outputs(net, x, perf, device, grad=False):
    """The model's output dict for one batch ``x`` (moved to ``device`` in the configured layout).
    ``grad=True`` keeps autograd (only to measure the release's backprop-through-the-network way)."""
    perf = perf or Performance()
    with (contextlib.nullcontext() if grad else torch.inference_mode()), perf.autocast_context(device):
        return check_outputs(net(perf.prepare_input(x, device)), net)


def batch_outputs(net, loader, perf, device, desc=None):
    """(output dict, targets) for each batch of ``loader``, with a progress bar when ``desc`` is given."""
    net.eval()
    for x, y in progress(loader, desc, show=desc is not None):
        yield network_outputs(net, x, perf, device), y


def collect_expert_logits(net, loader, device, perf=None, desc="test images"):
    """Every image's per-expert logits [N, E, C] (float32, CPU) and targets [N], in loader order."""
    logits, targets = [], []
    for out, y in batch_outputs(net, loader, perf, device, desc):
        logits.append(out["logits"].float().cpu())
        targets.append(y.cpu())  # the tensor pipeline yields targets on the device
    logits = torch.cat(logits)
    bad = int((~torch.isfinite(logits)).flatten(1).any(1).sum())
    if bad:
        raise UserError(f"the network gives NaN or infinite logits on {bad} of {len(logits)} {desc}; expected finite "
                        "outputs (the checkpoint's weights are corrupt or too large); nothing is scored or written")
    return logits, torch.cat(targets)


def predict(net, loader, perf, device):
    """Top-1 predictions of the ensemble and targets (device tensors) over ``loader``."""
    preds, targets = [], []
    for out, y in batch_outputs(net, loader, perf, device):
        preds.append(out["output"].argmax(1))
        targets.append(y.to(device, non_blocking=True))
    return torch.cat(preds), torch.cat(targets)
