"""Batch norm folded into the convolution before it, for passes that only read the network.

In eval mode a BatchNorm layer is a per-channel affine map, y = (x - mean) / sqrt(var + eps) * gamma
+ beta, so when its input is a convolution's output it can be folded into that convolution's weight
and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over the activations fewer per
layer, the same function up to float rounding. ``folded_copy`` returns such a copy for evaluation
only (test set, validation split, augmented views, unlabeled images); the network it copies, and
so every checkpoint, is unchanged.

Which convolution feeds which batch norm is read from one probe forward pass (hooks on the
modules), not from names, so any backbone built of ``nn.Conv2d`` and ``nn.BatchNorm2d`` folds; a
pair whose convolution output is also used elsewhere would change the function, so the copy's
logits are compared with the original's on the probe batch and a copy that differs by more than
``TOLERANCE`` is not used.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

TOLERANCE = 1e-3  # max |logit difference| on the probe batch (fp32), relative to the largest |logit| (at least 1)


def conv_bn_pairs(net, probe):
    """[(conv name, batch-norm name)] of each eval-mode BatchNorm whose input is the output of a
    Conv2d, found by running ``probe`` through ``net``."""
    names = {id(m): name for name, m in net.named_modules()}
    produced, pairs, hooks = {}, [], []

    def after_conv(module, inputs, output):
        produced[id(output)] = names[id(module)]

    def before_bn(module, inputs):
        source = produced.get(id(inputs[0]))
        if source is not None:
            pairs.append((source, names[id(module)]))

    for module in net.modules():
        if type(module) is nn.Conv2d:
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats \
                and module.running_mean is not None:
            hooks.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in hooks:
            h.remove()
    # a module used twice in one pass (shared weights) is left alone
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in dict.fromkeys(pairs) if convs.count(c) == 1 and bns.count(b) == 1]


def _set(root, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def folded_copy(net, probe):
    """(copy, number of folded layers): an eval-mode deep copy of ``net`` with every batch norm that
    directly follows a convolution folded into it, or (``net``, 0) when nothing folds or the copy's
    logits on ``probe`` (a batch of inputs, fp32) differ from ``net``'s by more than ``TOLERANCE``."""
    was_training = net.training
    net.eval()
    try:
        pairs = conv_bn_pairs(net, probe)
        if not pairs:
            return net, 0
        folded = copy.deepcopy(net)
        modules = dict(folded.named_modules())
        for conv_name, bn_name in pairs:
            _set(folded, conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
            _set(folded, bn_name, nn.Identity())
        with torch.no_grad():
            a, b = net(probe)["logits"].float(), folded(probe)["logits"].float()
        if (a - b).abs().max() > TOLERANCE * max(1.0, float(a.abs().max())):
            return net, 0
        return folded, len(pairs)
    finally:
        net.train(was_training)
