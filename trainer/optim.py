"""Optimiser and LR schedule from the config."""
import torch

import trainer.lr_scheduler as our_schedulers


def build_optimizer(config, model):
    return config.init_obj("optimizer", torch.optim, model.parameters())


def build_lr_scheduler(config, optimizer):
    if config.get("lr_scheduler") is None:
        return None
    return config.init_obj("lr_scheduler", [our_schedulers, torch.optim.lr_scheduler], optimizer)
