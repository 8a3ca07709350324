"""Test-time self-supervised aggregation of the experts (SPEC 6).

On one unlabeled test distribution, learn expert weights w = softmax(alpha) so that the aggregated
logits a(x) = sum_k w_k z_k(x) of two strongly augmented views of each image agree (cosine
similarity of their softmax predictions). The trained network is frozen and runs without autograd:
only alpha gets gradients, which changes no number and removes most of the cost.
"""
import contextlib

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.performance import Performance


def aggregate(logits, weights):
    """[B, E, C] expert logits, [E] weights -> [B, C] weighted sum of logits."""
    return torch.einsum("bec,e->bc", logits.float(), weights)


def consistency_loss(logits1, logits2, weights, entropy_weight=0.0):
    """-mean cos(softmax(a(x1)), softmax(a(x2))); minus ``entropy_weight`` x the entropy of both
    predictions (iNat uses 0.01)."""
    p1 = F.softmax(aggregate(logits1, weights), dim=1)
    p2 = F.softmax(aggregate(logits2, weights), dim=1)
    loss = -F.cosine_similarity(p1, p2, dim=1).mean()
    if entropy_weight:
        entropy = -(p1 * torch.log(p1 + 1e-9)).sum(1).mean() - (p2 * torch.log(p2 + 1e-9)).sum(1).mean()
        loss = loss - entropy_weight * entropy
    return loss


def should_stop(weights, stop_weight=0.05):
    """The release's rule: stop once any weight, rounded to 2 decimals, is below ``stop_weight``."""
    return bool((torch.round(weights.detach() * 100) / 100 < stop_weight).any())


class TestTimeAggregation:
    """Learns the weights for one distribution. ``make_optimizer(params)`` builds the optimiser of
    the test-time config; ``backprop_through_network=True`` reproduces the release's costly way
    (autograd through the whole frozen network) for benchmarking only."""

    __test__ = False  # not a pytest test class

    def __init__(self, net, num_experts, make_optimizer, device, perf=None, epochs=5, stop_weight=0.05,
                 entropy_weight=0.0, backprop_through_network=False):
        self.net = net
        self.num_experts = num_experts
        self.make_optimizer = make_optimizer
        self.device = torch.device(device)
        self.perf = perf or Performance()
        self.epochs = epochs
        self.stop_weight = stop_weight
        self.entropy_weight = entropy_weight
        self.backprop = backprop_through_network

    def _expert_logits(self, x1, x2):
        """Both views in one forward pass (eval-mode BN: batch composition changes nothing)."""
        x = self.perf.prepare_input(torch.cat([x1, x2]), self.device)
        grad = contextlib.nullcontext() if self.backprop else torch.inference_mode()
        with grad, self.perf.autocast_context(self.device):
            logits = self.net(x)["logits"]
        logits = logits.float() if self.backprop else logits.float().clone()
        return logits[: len(x1)], logits[len(x1):]

    def fit(self, loader, clean_logits=None, online=False, desc="test-time"):
        """Learn alpha. ``loader`` yields (view1, view2, index). With ``online``: one pass, and each
        batch is classified from ``clean_logits[index]`` right after its own update.

        Returns dict: weights (list), epochs_run, history (weights after every update) and, online,
        ``online_preds`` / ``online_index`` in stream order."""
        self.net.eval()
        alpha = torch.full((self.num_experts,), 1.0 / self.num_experts, device=self.device, requires_grad=True)
        optimizer = self.make_optimizer([alpha])
        history, online_preds, online_index = [], [], []
        epochs = 1 if online else self.epochs
        epochs_run = 0
        for epoch in range(epochs):
            for x1, x2, index in tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False,
                                      dynamic_ncols=True):
                z1, z2 = self._expert_logits(x1, x2)
                loss = consistency_loss(z1, z2, F.softmax(alpha, dim=0), self.entropy_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                weights = F.softmax(alpha.detach(), dim=0)
                history.append(weights.cpu())
                if online:
                    z = clean_logits[index].to(self.device)
                    online_preds.append(aggregate(z, weights).argmax(1).cpu())
                    online_index.append(index)
            epochs_run = epoch + 1
            if should_stop(F.softmax(alpha.detach(), dim=0), self.stop_weight):
                break
        result = {"weights": F.softmax(alpha.detach(), dim=0).cpu(), "epochs_run": epochs_run,
                  "history": torch.stack(history) if history else torch.zeros(0, self.num_experts)}
        if online:
            result["online_preds"] = torch.cat(online_preds)
            result["online_index"] = torch.cat(online_index)
        return result
