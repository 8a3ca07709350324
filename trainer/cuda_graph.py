"""Whole training steps replayed as one CUDA graph (``trainer.cuda_graph``, one GPU).

A ResNet-32 training step is about 2,000 small kernels. Launched one by one from Python, the GPU
waits for the host: about 3 s per CIFAR-100-LT epoch on an H200 whatever the precision. Captured
once as a CUDA graph (forward, loss, backward and optimiser step: the eager step's function,
trainer/train_step.py), a step is a copy of the batch
into a fixed input buffer and one graph launch. The kernels and their order are the ones the eager
step runs, so the numbers do not change.

What a graph fixes at capture, and when it is captured again:
- the batch shape: a shorter last batch runs eagerly instead;
- each parameter group's learning rate (a Python float the optimiser reads): a new graph is
  captured when the scheduler changes it (warmup and milestone epochs);
- the loss's epoch schedule (``schedule_state()`` of the loss contract, base/base_loss.py; RIDE's
  re-weighting): a change captures a new graph.
Mixup (trainer/mixup.py) is not fixed: its lam and perm are static input tensors like the batch,
copied in before each replay, and the graph mixes the batch and the two losses itself.
The first ``warmup`` steps run eagerly on a side stream, so that cuDNN's autotuning and the
optimiser's momentum buffers are made before the capture (as ``torch.cuda.graphs`` requires).
Not used with DataParallel, torchrun, fp16's gradient scaler or on a CPU: there the trainer runs
the eager step.
"""
import contextlib

import torch

from trainer.train_step import optimisation_step


def graph_unsupported_reason(runtime, model, scaler):
    """Why ``trainer.cuda_graph`` cannot be used here (None when it can)."""
    if runtime.device.type != "cuda":
        return "not on a CUDA device"
    if runtime.distributed or isinstance(model, torch.nn.DataParallel):
        return "several GPUs (DataParallel / torchrun) are not supported"
    if scaler is not None:
        return "fp16 autocast's gradient scaler is not supported (use bf16)"
    return None


class GraphedTrainStep:
    """``step(x, y, mix=None) -> (ensemble output, loss)``, both detached; the tensors are overwritten
    by the next call, so read or accumulate them before calling again (on the same stream). ``mix``:
    mixup's (lam, perm) device tensors, or None."""

    def __init__(self, model, criterion, optimizer, eager_step, amp_dtype=None, warmup=3):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.eager_step = eager_step
        self.amp_dtype = amp_dtype
        self.warmup = warmup
        self.warm_steps = 0
        self.graph = None
        self.key = None
        self.captures = 0
        self.side_stream = None
        self.largest_batch = 0  # a batch smaller than one already seen (an epoch's last) is never captured

    def _key(self, x, y, mix=None):
        state = self.criterion.schedule_state() if hasattr(self.criterion, "schedule_state") else None
        return (tuple(x.shape), tuple(y.shape), x.stride(), tuple(g["lr"] for g in self.optimizer.param_groups),
                state, mix is not None)

    def _eager(self, x, y, mix):
        return self.eager_step(x, y) if mix is None else self.eager_step(x, y, mix)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # The autocast weight cache must be off while capturing (its casts would be skipped on replay).
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype, cache_enabled=False)

    def _warmup_step(self, x, y, mix=None):
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(device=x.device)
        current = torch.cuda.current_stream(x.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            out = self._eager(x, y, mix)
        current.wait_stream(self.side_stream)
        self.warm_steps += 1
        return out

    def _capture(self, x, y, mix, key):
        self.graph = None  # release the previous graph and its memory first
        self.static_x, self.static_y = x.clone(), y.clone()
        self.static_mix = None if mix is None else tuple(t.clone() for t in mix)
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_output, self.static_loss = optimisation_step(
                self.model, self.criterion, self.optimizer, self.static_x, self.static_y, self.static_mix,
                autocast=self._autocast())
        self.graph, self.key = graph, key
        self.captures += 1

    def __call__(self, x, y, mix=None):
        short = x.shape[0] < self.largest_batch
        self.largest_batch = max(self.largest_batch, x.shape[0])
        if self.warm_steps < self.warmup:
            return self._warmup_step(x, y, mix)
        key = self._key(x, y, mix)
        if short or (self.graph is not None and key[:3] != self.key[:3]):
            return self._eager(x, y, mix)  # a shorter last batch: not worth a graph of its own
        if self.graph is None or key != self.key:
            self._capture(x, y, mix, key)  # records without running: the replay below runs it
        else:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            if mix is not None:
                for static, value in zip(self.static_mix, mix):
                    static.copy_(value)
        self.graph.replay()
        return self.static_output, self.static_loss
