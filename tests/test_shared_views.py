"""Self-supervised aggregation from views shared by every test set of a call
(docs/methods.md#shared-views): an image's views depend on the seed, the epoch and the image only;
one test set learns the same weights from shared views as from its own when the views coincide;
several sets of one call learn what each learns alone from the same view logits; view logits saved
with test.py --save_views run test_train.py --logits without the network (float16 included)."""
import json

import numpy as np
import pytest
import torch

from base.base_test_time import TestTimeContext as Context
from data_loader.cifar_lt import CIFAR100LTDataLoader
from trainer.adaptation import context_for, run_method, shared_views
from trainer.build import build_test_time_method, load_trained
from trainer.forward import collect_expert_logits
from trainer.saved_logits import load_logits
from trainer.test_time.self_supervised import SelfSupervisedAggregation
from trainer.view_logits import SavedViews, ViewLogits
from tests.helpers import ROOT, one_line_error, run_entry, write_cifar100

TT_CONFIG = ROOT / "configs" / "test_time_cifar100_tade.json"


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=6, test_per_class=2)


@pytest.mark.parametrize("pipeline", ["tensor", "pil"])
def test_an_images_views_depend_on_the_seed_and_the_image_only(cifar_dir, pipeline):
    data = CIFAR100LTDataLoader(str(cifar_dir), imb_factor=0.2, img_max=6, batch_size=16, pipeline=pipeline)

    def views(indices, seed, batch):
        out = {}
        for x1, x2, index in data.seeded_two_view_loader(np.asarray(indices), seed, batch, device="cpu"):
            out.update({int(i): (a, b) for i, a, b in zip(index, x1, x2)})
        return out

    a, b = views(np.arange(0, 60, 3), 7, 8), views(np.arange(59, -1, -1), 7, 32)  # other images, order, batches
    for i in a:
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert not torch.equal(a[i][0], a[i][1])  # two independent views
    other = views([0, 3], 8, 2)
    assert not torch.equal(other[0][0], a[0][0])  # another seed (epoch): other views
    torch.manual_seed(0)
    before = torch.get_rng_state()
    views([1], 7, 1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is left alone


class FixedViews:
    """Per-set views of a stub: each image's views are fixed tensors [E * C] (the stub network
    reads them as expert logits), each pass reshuffles with one draw from the generator, as the
    shared batches do."""

    def __init__(self, v1, v2, indices, batch_size, generator):
        self.v1, self.v2, self.indices, self.bs, self.g = v1, v2, torch.as_tensor(indices), batch_size, generator

    def __len__(self):
        return -(-len(self.indices) // self.bs)

    def __iter__(self):
        order = self.indices[torch.randperm(len(self.indices), generator=self.g)]
        for b in range(len(self)):
            index = order[b * self.bs:(b + 1) * self.bs]
            yield self.v1[index], self.v2[index], index


class AsLogits(torch.nn.Module):
    """A network whose expert logits are its input, reshaped (exact: no arithmetic)."""

    num_experts = 3

    def forward(self, x):
        logits = x.view(len(x), 3, -1)
        return {"output": logits.mean(1), "logits": logits}


def test_one_set_learns_the_same_weights_from_shared_views_as_from_its_own_when_they_coincide():
    g = torch.Generator().manual_seed(0)
    n, classes, epochs = 70, 6, 4
    v1, v2 = (torch.randn(epochs, n, 3 * classes, generator=g) * 3 for _ in range(2))
    v1[..., :classes] = v2[..., :classes] = torch.randn(n, classes, generator=g) * 3  # expert 1 sees content
    indices = torch.arange(5, 5 + 60)
    clean = torch.randn(len(indices), 3, classes, generator=g)

    class EpochViews(FixedViews):  # epoch e's views, as the shared views of epoch e
        epoch = 0

        def __iter__(self):
            self.v1, self.v2 = v1[self.epoch], v2[self.epoch]
            yield from super().__iter__()
            EpochViews.epoch += 1

    bank = ViewLogits(lambda e: torch.stack([v1[e], v2[e]], 1).view(n, 2, 3, classes), {})
    fits = {}
    for views in ("per_set", "shared"):
        method = SelfSupervisedAggregation(epochs=epochs, batch_size=16, views=views, stop_weight=0.3,
                                           optimizer={"type": "SGD", "args": {"lr": 2.0, "momentum": 0.9}})
        EpochViews.epoch = 0
        ctx = Context(num_experts=3, num_classes=classes, train_prior=torch.full((classes,), 1 / classes),
                              indices=indices, seed=11, net=AsLogits(),
                              two_view_loader=lambda bs, gen, num_workers=0: EpochViews(None, None, indices, bs, gen),
                              shared_views=lambda augmentation, epochs, num_workers: bank)
        fits[views] = method.adapt(clean, ctx)
    assert fits["shared"]["weights"] == fits["per_set"]["weights"]
    assert torch.equal(fits["shared"]["history"], fits["per_set"]["history"])
    assert fits["shared"]["epochs_run"] == fits["per_set"]["epochs_run"] < epochs  # the stopping rule, alike
    assert fits["shared"]["views"] == "shared" and fits["per_set"]["views"] == "per_set"


@pytest.fixture(scope="module")
def trained(small_run):
    t = load_trained(small_run[2])
    logits, targets = collect_expert_logits(t.net, t.data.test_loader(), "cpu", t.perf)
    return t, logits, targets


def tade(**args):
    return build_test_time_method(TT_CONFIG, [(f"test_time.args.{k}", v, "test") for k, v in args.items()])[0]


def full_weights(method, calls):
    """Wrap ``method.adapt`` to keep each set's unrounded weights."""
    adapt = method.adapt

    def spy(logits, ctx):
        out = adapt(logits, ctx)
        calls[ctx.name] = out["history"][-1]
        return out
    method.adapt = spy
    return method


def test_sets_of_one_call_learn_what_each_learns_alone_from_the_same_view_logits(trained):
    t, clean, targets = trained
    dists = t.data.test_distributions()
    sets = {name: dists[name] for name in ("forward50", "uniform", "backward25")}
    views = shared_views(t, "cpu", np.concatenate(list(sets.values())), seed=3)
    together = {}
    rows = run_method(full_weights(tade(epochs=2, stop_weight=0.0), together), t, clean, targets, sets, "cpu", seed=3,
                      views=views)
    made = views(None)  # the call's views, as a saved file would hold them (float32)
    assert made.computed() == 2 and made.meta["seed"] == 3 and made.meta["augmentation_args"] == {"blur_p": 0.2}
    saved = SavedViews("memory", made.stacked(2).numpy(), made.meta)
    for d, (name, indices) in enumerate(sets.items()):
        alone = {}
        method = full_weights(tade(epochs=2, stop_weight=0.0), alone)
        ctx = context_for(method, t, "cpu", name, indices, 3 * 1000 + d, targets, None, None, saved)
        method.adapt(clean[ctx.indices], ctx)
        assert torch.equal(alone[name], together[name]), name
        assert rows[name]["views"] == "shared"
    # float16 view logits (what a record stores) learn weights within 1e-3 of float32 ones
    half = SavedViews("memory", made.stacked(2).numpy().astype(np.float16), made.meta)
    for d, (name, indices) in enumerate(sets.items()):
        from16 = {}
        method = full_weights(tade(epochs=2, stop_weight=0.0), from16)
        method.adapt(clean[torch.as_tensor(indices)],
                     context_for(method, t, "cpu", name, indices, 3 * 1000 + d, targets, None, None, half))
        assert (from16[name] - together[name]).abs().max() < 1e-3, name


def test_saved_views_run_test_train_without_the_network(small_run, tmp_path, capfd):
    _, _, ckpt = small_run
    out = tmp_path / "eval.json"
    code, _, err = run_entry("test.py", ["-r", ckpt, "--out", out, "--save_logits", "--logits_dtype", "float16",
                                         "--save_views", "--view_epochs", "2", "--distributions", "uniform,forward50"],
                             capfd)
    assert code == 0, err
    logits_file = out.with_name("eval_logits.npz")
    saved = load_logits(logits_file)
    assert saved.views.arrays.shape == (2, len(saved.data.test_targets), 2, 3, 100)
    assert saved.views.arrays.dtype == np.float16
    assert saved.views.meta["epochs"] == 2 and saved.views.meta["seed"] == 1
    assert saved.views.meta["augmentation_args"] == {"blur_p": 0.2} and saved.views.meta["pipeline"] == "tensor"

    common = ["-c", TT_CONFIG, "--epochs", "2", "--distributions", "uniform,forward50"]
    code, _, err = run_entry("test_train.py", [*common, "--logits", logits_file, "--out", tmp_path / "f.json"], capfd)
    assert code == 0, err
    from_file = json.loads((tmp_path / "f.json").read_text())
    assert from_file["logits"] == str(logits_file) and from_file["views"]["read_epochs"] == 2
    code, _, err = run_entry("test_train.py", [*common, "-r", ckpt, "--out", tmp_path / "n.json"], capfd)
    assert code == 0, err
    from_net = json.loads((tmp_path / "n.json").read_text())
    assert from_net["views"]["seed"] == 1 and from_net["views"]["epochs"] == 2
    for name in ("uniform", "forward50"):
        a, b = from_file["distributions"][name], from_net["distributions"][name]
        assert np.abs(np.subtract(a["weights"], b["weights"])).max() <= 2e-3, name  # float16 views against float32

    def error(*argv):
        return run_entry("test_train.py", [str(a) for a in argv], capfd)[::2]

    one_line_error(*error(*common, "--logits", logits_file, "--epochs", "3", "--out", tmp_path / "x.json"),
                   "--view_epochs 3")
    one_line_error(*error(*common, "--logits", logits_file, "--set", "test_time.args.views=\"per_set\"",
                          "--out", tmp_path / "x.json"), "per_set")
    one_line_error(*error(*common, "--logits", logits_file, "--set", "test_time.args.augmentation.blur_p=0.5",
                          "--out", tmp_path / "x.json"), "blur_p", "0.5")
    plain = tmp_path / "plain.json"
    assert run_entry("test.py", ["-r", ckpt, "--out", plain, "--save_logits", "--distributions", "uniform"],
                     capfd)[0] == 0
    one_line_error(*error(*common[:-2], "--distributions", "uniform", "--logits", plain.with_name("plain_logits.npz"),
                          "--out", tmp_path / "x.json"), "no view logits", "--save_views")
    one_line_error(*error(*common, "--out", tmp_path / "x.json"), "-r CHECKPOINT", "--logits")
    one_line_error(*run_entry("test.py", ["-r", ckpt, "--out", tmp_path / "y.json", "--save_views"], capfd)[::2],
                   "--save_views", "--save_logits")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
