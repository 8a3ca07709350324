"""Optimiser and LR schedule from the config."""
import torch

import trainer.lr_scheduler as our_schedulers
from utils.errors import UserError
from utils.runtime import unwrap


def parameter_groups(model, backbone_lr, source="config"):
    """Two groups: the experts' classifiers (``is_classifier`` of the model contract, base/base_model.py)
    at the optimiser's ``lr``, everything
    else at ``backbone_lr`` (Places-LT fine-tunes a pretrained backbone slowly, docs/methods.md#recipes). The
    classifier group comes first, so logs that show group 0's lr show ``lr``."""
    if not isinstance(backbone_lr, (int, float)) or isinstance(backbone_lr, bool) or backbone_lr < 0:
        raise UserError(f"config {source}: optimizer.backbone_lr must be a non-negative number, got {backbone_lr!r}")
    net = unwrap(model)  # DataParallel / DDP: the contract is the wrapped model's
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    heads = [p for n, p in named if net.is_classifier(n)]
    rest = [p for n, p in named if not net.is_classifier(n)]
    if not heads:
        raise UserError(f"config {source}: optimizer.backbone_lr is set but {type(net).__name__} has no classifier "
                        "parameters (is_classifier)")
    return [{"params": heads}, {"params": rest, "lr": float(backbone_lr)}]


def build_optimizer(config, model):
    """``optimizer.type`` with ``optimizer.args``; with ``optimizer.backbone_lr`` the classifiers
    train at ``args.lr`` and the rest of the network at ``backbone_lr``."""
    backbone_lr = config.get("optimizer.backbone_lr")
    if backbone_lr is None:
        return config.init_obj("optimizer", torch.optim, model.parameters())
    return config.init_obj("optimizer", torch.optim, parameter_groups(model, backbone_lr, config.source))


def build_lr_scheduler(config, optimizer):
    if config.get("lr_scheduler") is None:
        return None
    return config.init_obj("lr_scheduler", [our_schedulers, torch.optim.lr_scheduler], optimizer)
