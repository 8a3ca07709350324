"""Cosine classifier of the release: logits = cos(feature, w_c); the model scales them by s.

It always runs in float32, also under autocast: the model multiplies the cosines by s = 30, which
would turn bf16's rounding of a cosine (about 0.004) into about 0.1 of a logit. The cost is one
small matrix product per expert."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        # Stored (in_features, out_features) as in the release, so its checkpoints load.
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        kind = x.device.type
        no_autocast = (torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind)
                       else contextlib.nullcontext())  # e.g. the meta device of MAC counting
        with no_autocast:
            return F.normalize(x.float(), dim=1).mm(F.normalize(self.weight.float(), dim=0))
