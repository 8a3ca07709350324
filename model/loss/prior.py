"""Class priors as buffers, so they move with ``.to(device)`` (no ``.cuda()`` inside a loss)."""
import torch
from torch import nn


class PriorLoss(nn.Module):
    def __init__(self, cls_num_list):
        super().__init__()
        if not cls_num_list:
            raise ValueError("cls_num_list (training counts per class) is required")
        counts = torch.as_tensor(cls_num_list, dtype=torch.float64)
        self.register_buffer("prior", (counts / counts.sum()).float(), persistent=False)

    @staticmethod
    def expert_logits(outputs):
        """[B, E, C] per-expert logits (or [B, 1, C] from a plain tensor)."""
        if isinstance(outputs, dict):
            return outputs["logits"] if "logits" in outputs else outputs["output"].unsqueeze(1)
        return outputs.unsqueeze(1)
