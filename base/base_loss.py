"""What a training loss is: the contract every class in ``model/loss/`` honours (found by
``loss.type``).

- Built with the per-class training counts: ``Loss(cls_num_list=[n_0, ..., n_{C-1}], **loss.args)``;
  the training prior ``p = n / sum(n)`` is the buffer ``self.prior`` (it moves with ``.to(device)``).
- Called as ``loss(outputs, target)`` with the model's output dict (``logits`` [B, E, C]) and the
  class indices [B]; returns a scalar tensor.
- ``required_experts``: the number of experts the loss is written for (None: any). A config whose
  model has another number is refused before training.
- An epoch schedule is declared, not hidden: the trainer calls ``set_epoch(epoch)`` (0-based) before
  every epoch, and ``schedule_state()`` returns the Python state that ``forward`` branches on (a
  hashable value; None for a loss without a schedule). The trainer uses it to know when replayed
  training steps (CUDA graphs) must be recorded again, so a loss needs no knowledge of them.
- Before ``set_epoch`` the trainer calls ``set_run(epochs, steps_per_epoch, seed)``: the run's length,
  the number of steps in each epoch (this process's) and the run's seed, for a loss whose schedule or
  random draws depend on them (DirMixE's pool of Dirichlet draws and its gate).
- A loss's ``state_dict()`` (persistent buffers and ``get_extra_state``) travels in the training
  checkpoint and is loaded on resume; the losses that keep nothing there save an empty dict.

The returned value is checked at every training step (:func:`check_loss`; no device synchronisation).
"""
import torch
from torch import nn

from utils.errors import UserError


class LTLoss(nn.Module):
    required_experts = None

    def __init__(self, cls_num_list):
        super().__init__()
        if not cls_num_list:
            raise ValueError("cls_num_list (training counts per class) is required")
        counts = torch.as_tensor(cls_num_list, dtype=torch.float64)
        self.register_buffer("prior", (counts / counts.sum()).float(), persistent=False)

    def forward(self, outputs, target):
        raise NotImplementedError

    def set_epoch(self, epoch):
        """Called before each 0-based epoch; losses with a schedule update their state here."""

    def set_run(self, epochs, steps_per_epoch, seed):
        """Called before each epoch's ``set_epoch`` with the run's length, steps per epoch and seed."""

    def schedule_state(self):
        """The Python state ``forward`` depends on (changes only in ``set_epoch``); None: none."""
        return None

    def check_experts(self, num_experts, source="config"):
        """Refuse a model whose number of experts this loss is not written for (one line)."""
        if self.required_experts is not None and num_experts != self.required_experts:
            raise UserError(f"config {source}: loss.type {type(self).__name__} needs arch.args.num_experts "
                            f"{self.required_experts}, got {num_experts}")

    @staticmethod
    def expert_logits(outputs):
        """[B, E, C] per-expert logits (or [B, 1, C] from a plain tensor)."""
        if isinstance(outputs, dict):
            return outputs["logits"] if "logits" in outputs else outputs["output"].unsqueeze(1)
        return outputs.unsqueeze(1)


def check_loss(value, criterion):
    """The contract of a loss's return value: a floating-point scalar tensor (0-dim) that autograd
    can differentiate; one line naming the loss if not."""
    name = type(criterion).__name__
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        got = (f"a {value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
               else type(value).__name__)
        raise UserError(f"loss {name}: forward returned {got}; expected a floating-point scalar tensor (0-dim)")
    if torch.is_grad_enabled() and not value.requires_grad:
        raise UserError(f"loss {name}: forward returned a tensor without autograd history (requires_grad False); "
                        "the loss must be computed from the model's outputs")
    return value
