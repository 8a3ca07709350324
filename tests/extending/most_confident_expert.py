"""A test-time method: for each image, trust the expert that is most confident about it."""
import torch

from base.base_test_time import TestTimeMethod


class MostConfidentExpert(TestTimeMethod):
    needs_views = False  # clean logits only: every test set is scored from one forward pass

    def __init__(self, temperature=1.0):
        if not temperature > 0:
            raise ValueError(f"temperature {temperature!r}: expected a number > 0")
        self.temperature = float(temperature)

    def adapt(self, logits, ctx):  # logits: [n, E, C] clean expert logits of one test set
        confidence = torch.softmax(logits / self.temperature, 2).amax(2)  # [n, E]
        chosen = confidence.argmax(1)
        scores = logits[torch.arange(len(logits)), chosen]
        share = torch.bincount(chosen, minlength=ctx.num_experts) / len(chosen)
        return {"scores": scores, "expert_share": [round(float(s), 4) for s in share]}
