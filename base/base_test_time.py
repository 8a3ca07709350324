"""What a test-time method is: the contract every class in ``trainer/test_time/`` honours.

A test-time method adapts the trained ensemble to one unlabeled test set (one of the eleven
distributions, or one subset of another protocol) and returns a score per class for each of its
images; the prediction is the argmax. ``test_train.py`` builds the class named by the test-time
config's ``test_time.type`` with ``test_time.args``, computes the clean (test-transform) expert
logits of the whole test set once, and calls the method on each test set.

A method declares what it needs:
- ``needs_views``: False (the default) means it works on the clean logits alone, so every test set
  is scored from one forward pass; True means it also gets strongly augmented views of the test
  images through the network: the call's shared views, drawn once for all its test sets
  (``TestTimeContext.shared_views``), or the test set's own (``two_view_loader``); self-supervised
  aggregation.
- ``uses_test_labels``: True only for an oracle (a ceiling for tables). It is then given the test
  set's labels, its name says "oracle" in every output, and no shipped default config selects it.
- ``online()``: a method that can run on a stream (predict each batch, then learn from it) returns
  an :class:`OnlineAdapter`; the streaming protocol uses it. The default (None) means it cannot.

What ``adapt`` returns is checked as soon as it returns (:func:`check_result`): ``scores`` must be
a tensor [n, C], and every other entry JSON-able (it is written into the results row). Scores are
only ranked (the prediction is their argmax), so logits, probabilities and log probabilities all
work.
"""
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from utils.errors import UserError

NOT_FACTS = ("scores", "online_scores", "history")  # entries of a result that are not written into the row


@dataclass
class TestTimeContext:
    """What a method may use besides the logits: facts about the model and its training data, and,
    only for the methods that declare them, the network's augmented views or the test labels."""

    num_experts: int
    num_classes: int
    train_prior: torch.Tensor  # [C] training class frequencies (sums to 1)
    indices: Optional[torch.Tensor] = None  # [n] test-set indices of this test set (into the test set)
    name: str = "test"  # the test set's name (for progress bars and messages; a method must not branch on it)
    seed: int = 1  # the seed of this test set's random draws (differs between test sets)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # needs_views only: the network, its precision settings, and batches of augmented views.
    net: Optional[torch.nn.Module] = None
    perf: object = None
    # (batch_size, generator, num_workers=0, **augmentation) -> loader of (view1, view2, test-set index);
    # this test set's own views (None when the call has no network: saved logits)
    two_view_loader: Optional[Callable] = None
    # (augmentation, epochs, num_workers) -> the call's shared views (trainer/view_logits.py:ViewLogits): epoch
    # e's expert logits of one pair of views of every image, drawn once per call for all its test sets
    shared_views: Optional[Callable] = None
    # allowed reference data: clean logits of the *training* images (test transform), computed on first use.
    reference_logits: Optional[Callable] = None  # () -> (logits [N_train, E, C], targets [N_train])
    # allowed held-out data: clean logits of the validation split (never trained on, not the test set);
    # None when the data module has none.
    validation_logits: Optional[Callable] = None  # () -> (logits [N_val, E, C], targets [N_val])
    validation_info: Optional[dict] = None  # the data module's validation_info (where the split came from)
    # uses_test_labels only (oracles): the labels of this test set.
    targets: Optional[torch.Tensor] = None


class OnlineAdapter(ABC):
    """A method's state on a stream: ``step`` returns the scores of a batch computed *before* the
    batch is used for learning, then learns from it."""

    @abstractmethod
    def step(self, logits):
        """[b, E, C] clean expert logits of the next batch -> [b, C] scores (from the state before it)."""

    def summary(self):
        """JSON-able facts about the final state (e.g. the estimated prior), for the results row."""
        return {}


class TestTimeMethod(ABC):
    """A test-time method, built from ``test_time.args``; one instance serves every test set."""

    needs_views = False
    uses_test_labels = False

    @abstractmethod
    def adapt(self, logits, ctx):
        """[n, E, C] clean expert logits of one test set (float32, CPU) -> dict with ``scores``
        ([n, C], argmax = prediction) and any JSON-able facts (``weights``, ``prior``, ...)."""

    def check(self, data):
        """Called once with the data module before any work: raise ValueError for settings it
        cannot honour (e.g. augmentation keys its two-view transform does not take)."""

    def check_experts(self, num_experts):
        """Called once with the model's number of experts before any work: raise ValueError for
        settings the model cannot honour (an expert index out of range)."""

    def online(self, ctx):
        """An :class:`OnlineAdapter` for the streaming protocol, or None if the method cannot stream."""
        return None

    @classmethod
    def label(cls):
        """The name written in results: the class name, marked as an oracle when it uses test labels."""
        name = cls.__name__
        return f"{name} (oracle: uses test labels)" if cls.uses_test_labels and "oracle" not in name.lower() else name


def check_facts(facts, method, where="adapt()"):
    """Every entry of ``facts`` (besides the scores) must be JSON-able: one line naming the key if not."""
    for key, value in facts.items():
        if key in NOT_FACTS:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            kind = type(value).__name__
            raise UserError(f"test-time method {method}: {where} returned {key!r} as {kind} ({e}); entries beside "
                            "'scores' must be JSON-able (numbers, strings, lists, dicts: use .tolist() or float())")


def check_result(result, method, num_images, num_classes):
    """The contract of ``adapt``'s return value, checked right after it returns: a dict with
    ``scores`` [n, C] (and ``online_scores`` of the same shape if present) and JSON-able facts."""
    if not isinstance(result, dict):
        raise UserError(f"test-time method {method}: adapt() returned {type(result).__name__}; expected a dict "
                        "with 'scores' ([n, C] tensor) and JSON-able facts")
    for key in ("scores", "online_scores"):
        if key not in result and key == "online_scores":
            continue
        scores = result.get(key)
        if scores is None:
            raise UserError(f"test-time method {method}: adapt() returned no {key!r}; expected a [n, C] tensor "
                            f"of class scores (n = {num_images} images, C = {num_classes} classes)")
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        if shape != [num_images, num_classes]:
            raise UserError(f"test-time method {method}: adapt() returned {key!r} of shape {shape}; expected a "
                            f"tensor [{num_images}, {num_classes}] (images, classes)")
    check_facts(result, method)
    return result
