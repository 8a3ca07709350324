"""Test-time self-supervised aggregation of the experts (TADE, docs/methods.md#test-time-aggregation).

On one unlabeled test distribution, learn expert weights w = softmax(alpha) so that the aggregated
logits a(x) = sum_k w_k z_k(x) of two strongly augmented views of each image agree (cosine
similarity of their softmax predictions), then classify the clean images with a(x). The trained
network is frozen and runs without autograd: only alpha gets gradients, which changes no number
and removes most of the cost. By default the views are the call's shared ones
(trainer/view_logits.py): each epoch's views of every image go through the network once for all
test sets of the call; ``views: "per_set"`` draws each set's own (the release's sampling).
"""
import inspect

import torch
import torch.nn.functional as F

from base.base_test_time import TestTimeMethod
from trainer.forward import network_outputs
from trainer.view_logits import SharedViewBatches
from utils.errors import UserError
from utils.parse_config import ConfigParser
from utils.progress import progress


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


class NetworkViewBatches:
    """One test set's own views (``views: "per_set"``, the release's sampling): each pass of
    ``loader`` draws new views of its images, which go through the network batch by batch; yields
    (view-1 logits [b, E, C], view-2 logits, test-set index). ``backprop=True`` keeps autograd
    through the network (the release's costly way, for benchmarks only)."""

    def __init__(self, loader, net, perf, device, backprop=False):
        self.loader, self.net, self.perf, self.device, self.backprop = loader, net, perf, device, backprop

    def __len__(self):
        return len(self.loader)

    def __call__(self, epoch):
        self.net.eval()
        for x1, x2, index in self.loader:
            # both views in one forward pass (eval-mode BN: batch composition changes nothing)
            logits = network_outputs(self.net, torch.cat([x1, x2]), self.perf, self.device, grad=self.backprop)
            logits = logits["logits"].float() if self.backprop else logits["logits"].float().clone()
            yield logits[: len(x1)], logits[len(x1):], index


class AggregationWeightLearner:
    """Learns the weights for one test set from its batches of view logits (``NetworkViewBatches``
    or ``trainer.view_logits.SharedViewBatches``: the same loop either way). ``make_optimizer(params)``
    builds the optimiser of the test-time config."""

    def __init__(self, num_experts, make_optimizer, device, epochs=5, stop_weight=0.05, entropy_weight=0.0):
        self.num_experts = num_experts
        self.make_optimizer = make_optimizer
        self.device = torch.device(device)
        self.epochs = epochs
        self.stop_weight = stop_weight
        self.entropy_weight = entropy_weight

    def fit(self, batches, clean_logits=None, online=False, desc="test-time"):
        """Learn alpha. ``batches(epoch)`` yields (view-1 logits, view-2 logits, index) and
        ``len(batches)`` is their number per epoch. With ``online``: one pass, and each batch is
        classified from ``clean_logits[index]`` right after its own update.

        Returns dict: weights (list), epochs_run, history (weights after every update) and, online,
        ``online_preds`` / ``online_index`` in stream order."""
        alpha = torch.full((self.num_experts,), 1.0 / self.num_experts, device=self.device, requires_grad=True)
        optimizer = self.make_optimizer([alpha])
        history, online_preds, online_index = [], [], []
        epochs = 1 if online else self.epochs
        epochs_run = 0
        for epoch in range(epochs):
            for z1, z2, index in progress(batches(epoch), f"{desc} epoch {epoch + 1}/{epochs}", total=len(batches)):
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


VIEWS = ("shared", "per_set")


DEFAULT_OPTIMIZER = {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}}


class SelfSupervisedAggregation(TestTimeMethod):
    """TADE's test-time step: expert weights learned from two-view prediction consistency.

    Args (``test_time.args``): ``optimizer`` ({"type", "args"} of a ``torch.optim`` class, on alpha),
    ``epochs`` (5), ``batch_size`` (128), ``stop_weight`` (0.05), ``entropy_weight`` (0; iNat 0.01),
    ``augmentation`` (keyword arguments of the data module's ``two_view_transform``), ``num_workers``
    (loader workers of the PIL two-view pipeline), ``online`` (one pass; each batch is classified
    right after its own update, reported as ``top1_online``), ``views`` ("shared", the default: each
    epoch's views of every image are drawn once per call and every test set reads its own images'
    rows, docs/methods.md#shared-views; "per_set": each test set draws and passes its own views, the
    release's sampling), ``backprop_through_network`` (benchmarks only, with "per_set": the
    release's costly way).
    """

    needs_views = True

    def __init__(self, optimizer=None, epochs=5, batch_size=128, stop_weight=0.05, entropy_weight=0.0,
                 augmentation=None, num_workers=0, online=False, views="shared", backprop_through_network=False):
        self.optimizer = optimizer or DEFAULT_OPTIMIZER
        try:  # a bad optimizer section fails here, before any work
            self._make_optimizer([torch.zeros(1, requires_grad=True)])
        except UserError as e:
            raise ValueError(str(e).replace("config test_time.args: ", "")) from None
        for key, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} {value!r}: expected an integer >= {low}")
        self.epochs, self.batch_size, self.num_workers = epochs, batch_size, num_workers
        self.stop_weight, self.entropy_weight = float(stop_weight), float(entropy_weight)
        if augmentation is not None and not isinstance(augmentation, dict):
            raise ValueError(f"augmentation {augmentation!r}: expected an object of two_view_transform arguments")
        self.augmentation = augmentation or {}
        self.online = bool(online)
        if views not in VIEWS:
            raise ValueError(f"views {views!r}: expected one of {', '.join(repr(v) for v in VIEWS)}")
        self.views = views
        self.backprop = bool(backprop_through_network)
        if self.backprop and views != "per_set":
            raise ValueError("backprop_through_network true: expected views \"per_set\" (the release's way draws "
                             "each test set's own views through the network)")

    def _make_optimizer(self, params):
        return ConfigParser({"optimizer": self.optimizer}, source="test_time.args").init_obj("optimizer", torch.optim,
                                                                                            params)

    def check(self, data):
        """The augmentation keys must be arguments of the data module's two-view augmentation (saved
        logits have none: their views are checked against these settings when read)."""
        if not hasattr(data, "two_view_transform"):
            return
        allowed = list(inspect.signature(data.two_view_transform).parameters)
        unknown = set(self.augmentation) - set(allowed)
        if unknown:
            raise ValueError(f"augmentation {self.augmentation!r}: expected keys among {', '.join(allowed)} "
                             f"({type(data).__name__})")
        data.two_view_transform(**self.augmentation)  # its values too (blur_p 5), before any work

    def view_epochs(self):
        """The epochs of views a call may read (one pass online)."""
        return 1 if self.online else self.epochs

    def _batches(self, ctx, generator):
        if self.views == "shared":
            views = ctx.shared_views(self.augmentation, self.view_epochs(), self.num_workers)
            return SharedViewBatches(views, ctx.indices, self.batch_size, generator, ctx.device)
        if ctx.two_view_loader is None:
            raise UserError("test_time.args.views \"per_set\" draws each test set's own views through the network, "
                            "which saved logits do not hold; expected views \"shared\" (or a checkpoint with -r)")
        torch.manual_seed(ctx.seed)  # augmentation in the main process
        loader = ctx.two_view_loader(self.batch_size, generator, num_workers=self.num_workers, **self.augmentation)
        return NetworkViewBatches(loader, ctx.net, ctx.perf, ctx.device, self.backprop)

    def adapt(self, logits, ctx):
        generator = torch.Generator().manual_seed(ctx.seed)
        batches = self._batches(ctx, generator)
        learner = AggregationWeightLearner(ctx.num_experts, self._make_optimizer, ctx.device, epochs=self.epochs,
                                           stop_weight=self.stop_weight, entropy_weight=self.entropy_weight)
        # online: the batches carry test-set indices; the clean logits are indexed by test-set index.
        clean = _by_test_index(logits, ctx.indices) if self.online else None
        fit = learner.fit(batches, clean_logits=clean, online=self.online, desc=ctx.name)
        w = fit["weights"]
        out = {"scores": aggregate(logits, w), "weights": [round(float(v), 4) for v in w],
               "epochs_run": fit["epochs_run"], "views": self.views, "history": fit["history"]}
        if self.online:
            position = {int(i): p for p, i in enumerate(ctx.indices.tolist())}
            scores = torch.empty(len(logits), logits.shape[2])
            order = torch.tensor([position[int(i)] for i in fit["online_index"]])
            scores[order] = F.one_hot(fit["online_preds"], logits.shape[2]).float()
            out["online_scores"] = scores
        return out


class _by_test_index:
    """Rows of a test set's logits looked up by test-set index (what the two-view loader yields)."""

    def __init__(self, logits, indices):
        self.logits = logits
        self.position = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        self.position[indices] = torch.arange(len(indices))

    def __getitem__(self, index):
        return self.logits[self.position[torch.as_tensor(index)]]
