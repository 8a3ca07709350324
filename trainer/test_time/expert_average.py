"""The references every test-time method is compared with: the plain average of the experts'
logits (what ``test.py`` reports) and a single expert."""
from base.base_model import average_experts
from base.base_test_time import OnlineAdapter, TestTimeMethod


class ExpertAverage(TestTimeMethod):
    """No adaptation: the mean of the expert logits."""

    def adapt(self, logits, ctx):
        return {"scores": average_experts(logits.float())}

    def online(self, ctx):
        return _Stateless(self, ctx)


class SingleExpert(TestTimeMethod):
    """One expert's logits alone (``expert``: 0-based index)."""

    def __init__(self, expert=0):
        if not isinstance(expert, int) or isinstance(expert, bool) or expert < 0:
            raise ValueError(f"expert {expert!r}: expected an expert index >= 0")
        self.expert = expert

    def check_experts(self, num_experts):
        if self.expert >= num_experts:
            raise ValueError(f"expert {self.expert}: the model has {num_experts} expert(s) (0-based index)")

    def adapt(self, logits, ctx):
        if self.expert >= logits.shape[1]:
            raise ValueError(f"expert {self.expert}: the model has {logits.shape[1]} expert(s) (0-based index)")
        return {"scores": logits[:, self.expert].float()}

    def online(self, ctx):
        return _Stateless(self, ctx)


class _Stateless(OnlineAdapter):
    """A method without state streams by scoring each batch on its own."""

    def __init__(self, method, ctx):
        self.method, self.ctx = method, ctx

    def step(self, logits):
        return self.method.adapt(logits, self.ctx)["scores"]
