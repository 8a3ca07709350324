"""One training step, the one place for what a step does, top to bottom: the inputs mixed when
``mix = (lam, perm)`` (the mixup draws: trainer/mixup.py), the forward pass and the loss (each
checked against its contract in base/), backward and the optimiser step. The eager step
(trainer/trainer.py) runs it and the CUDA-graph step (trainer/cuda_graph.py) captures it, so a
change here (gradient clipping, an EMA of the weights) reaches both.

What runs here is captured into a CUDA graph as it is: only tensor work on the device, no reading
of a tensor's value on the host, no new Python state read per step (see trainer/cuda_graph.py)."""
import contextlib

from base.base_loss import check_loss
from base.base_model import check_outputs
from trainer.mixup import mix_inputs, mixed_loss


def forward_loss(model, criterion, x, y, mix=None):
    """The model's outputs and the training loss of one batch, mixed when ``mix = (lam, perm)``."""
    if mix is None:
        outputs = check_outputs(model(x), model)
        return outputs, check_loss(criterion(outputs, y), criterion)
    lam, perm = mix
    outputs = check_outputs(model(mix_inputs(x, lam, perm)), model)
    return outputs, check_loss(mixed_loss(criterion, outputs, y, lam, perm), criterion)


def optimisation_step(model, criterion, optimizer, x, y, mix=None, autocast=None, scaler=None):
    """Forward, loss, backward and optimiser step on one batch; returns the detached ensemble
    output and loss. ``autocast``: the precision context for the forward and loss (None: none);
    ``scaler``: fp16's gradient scaler, or None."""
    with autocast if autocast is not None else contextlib.nullcontext():
        outputs, loss = forward_loss(model, criterion, x, y, mix)
    # No-op in a capture: the graph step sets the gradients to None before it (its backward allocates them).
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return outputs["output"].detach(), loss.detach()
