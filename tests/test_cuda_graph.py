"""trainer.cuda_graph: on a CPU (and under DataParallel, torchrun or fp16) the Trainer takes the
eager step; on a GPU the graph replays equal the eager steps, and the three scripts run with
-d cuda (these run where CUDA is present: bench/gpu_checks.sh runs them on the device machine)."""
import copy
import types
import math

import pytest
import torch

from data_loader.digits_lt import DigitsLTDataLoader
from model.loss.diverse_expert_loss import DiverseExpertLoss
from model.loss.ride_loss import RIDELoss
from model.resnet_cifar import ExpertResNetCifar
from trainer import Trainer
from trainer.cuda_graph import GraphedTrainStep, graph_unsupported_reason
from utils.parse_config import ConfigParser
from utils.performance import Performance
from utils.runtime import Runtime

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by bench/gpu_checks.sh)")


def test_cpu_trainer_with_cuda_graph_key_takes_the_eager_step(tmp_path):
    data = DigitsLTDataLoader(img_max=12, imb_factor=0.5, batch_size=32)
    trainer_cfg = {"epochs": 1, "tensorboard": False, "monitor": "off", "cuda_graph": True}
    config = ConfigParser({"trainer": trainer_cfg, "seed": 0}, source="test")
    torch.manual_seed(0)
    net = ExpertResNetCifar((1, 1, 1), num_classes=10, num_experts=3, reduce_dimension=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(net, DiverseExpertLoss(data.cls_num_list), optimizer, None, config,
                      Runtime(torch.device("cpu")), data)
    assert Performance.from_config(trainer_cfg).cuda_graph and trainer.graphed_step is None
    assert math.isfinite(trainer._train_epoch(0)["loss"])


def test_unsupported_settings_are_named():
    cpu = Runtime(torch.device("cpu"))
    assert "CUDA" in graph_unsupported_reason(cpu, torch.nn.Linear(1, 1), None)
    gpu = Runtime(torch.device("cuda", 0))
    assert "DataParallel" in graph_unsupported_reason(gpu, torch.nn.DataParallel(torch.nn.Linear(1, 1)), None)
    assert "fp16" in graph_unsupported_reason(gpu, torch.nn.Linear(1, 1), object())
    assert graph_unsupported_reason(gpu, torch.nn.Linear(1, 1), None) is None


def _eager_step(model, criterion, optimizer, amp):
    def step(x, y):
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            outputs = model(x)
            loss = criterion(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return outputs["output"].detach(), loss.detach()
    return step


def _eager_and_graphed(loss, amp):
    """Two copies of one ResNet-8 with their loss and SGD: one stepped eagerly, one through
    GraphedTrainStep (models, losses, optimisers, eager step, graphed step)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    counts = [40, 20, 10, 5, 3]
    torch.manual_seed(0)
    net = ExpertResNetCifar((1, 1, 1), num_classes=5, num_experts=3).cuda().to(memory_format=torch.channels_last)
    make_loss = {"tade": lambda: DiverseExpertLoss(counts), "ride": lambda: RIDELoss(counts, reweight_epoch=1)}[loss]
    models = {"eager": net, "graph": copy.deepcopy(net)}
    crits = {k: make_loss().cuda() for k in models}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
            for k, m in models.items()}
    eager = _eager_step(models["eager"], crits["eager"], opts["eager"], amp)
    graphed = GraphedTrainStep(models["graph"], crits["graph"], opts["graph"],
                               _eager_step(models["graph"], crits["graph"], opts["graph"], amp), amp)
    return models, crits, opts, eager, graphed


@cuda
@pytest.mark.parametrize("amp,loss", [(None, "tade"), (torch.bfloat16, "tade"), (None, "ride")])
def test_graph_replays_equal_eager_steps(amp, loss):
    models, crits, opts, eager, graphed = _eager_and_graphed(loss, amp)
    g = torch.Generator().manual_seed(1)
    for epoch in range(3):
        for opt in opts.values():  # a scheduler's change: the graph is captured again
            opt.param_groups[0]["lr"] = 0.05 * (epoch + 1)
        for crit in crits.values():
            if hasattr(crit, "set_epoch"):
                crit.set_epoch(epoch)
        for size in (16, 16, 16, 16, 16, 7):  # full batches, then a shorter last one (eager)
            x = torch.randn(size, 3, 32, 32, generator=g).cuda().contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 5, (size,), generator=g).cuda()
            out_e, loss_e = eager(x, y)
            out_g, loss_g = graphed(x, y)
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out_g, out_e, rtol=1e-3, atol=1e-3)
    assert graphed.captures == 3
    for (name, a), b in zip(models["eager"].state_dict().items(), models["graph"].state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5, msg=name)


@cuda
def test_one_graph_replays_across_epochs_at_a_constant_lr():
    """The common case: the lr stays put, so the graph captured in epoch 1 is replayed in every
    epoch; each epoch's shorter last batch runs eagerly; the capture never happens on the short
    batch, even when it is the first batch after the warm-up steps."""
    models, crits, opts, eager, graphed = _eager_and_graphed("tade", None)
    g = torch.Generator().manual_seed(2)
    sizes = (16, 16, 16, 7)  # 3 warm-up steps, then the short batch: it must run eagerly, not be captured
    for epoch in range(4):
        for step, size in enumerate(sizes):
            x = torch.randn(size, 3, 32, 32, generator=g).cuda().contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 5, (size,), generator=g).cuda()
            out_e, loss_e = eager(x, y)
            out_g, loss_g = graphed(x, y)
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out_g, out_e, rtol=1e-3, atol=1e-3)
            if epoch == 0 and step == 3:
                assert graphed.graph is None  # no capture on the short batch
    assert graphed.captures == 1 and graphed.key[0][0] == 16  # captured once, on a full batch, then replayed
    for (name, a), b in zip(models["eager"].state_dict().items(), models["graph"].state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5, msg=name)


def test_short_batch_is_never_captured_cpu_logic():
    """The capture rule without a GPU: after warm-up, a batch smaller than one already seen runs
    the eager step (GraphedTrainStep's bookkeeping, with capture and replay stubbed out)."""
    calls = []
    step = GraphedTrainStep(None, None, types.SimpleNamespace(param_groups=[{"lr": 0.1}]),
                            lambda x, y, mix=None: calls.append(("eager", x.shape[0])) or (x, x), warmup=3)
    step._warmup_step = lambda x, y, mix=None: (calls.append(("warm", x.shape[0])), step.__setattr__(
        "warm_steps", step.warm_steps + 1))[0] or (x, x)
    step._capture = lambda x, y, mix, key: calls.append(("capture", x.shape[0])) or step.__setattr__("key", key) \
        or step.__setattr__("graph", types.SimpleNamespace(replay=lambda: calls.append(("replay", 0))))
    step.static_output = step.static_loss = None
    step.static_x, step.static_y = torch.zeros(16, 1), torch.zeros(16)
    for size in (16, 16, 16, 7, 16, 16, 7):
        step(torch.zeros(size, 1), torch.zeros(size))
    assert calls == [("warm", 16)] * 3 + [("eager", 7), ("capture", 16), ("replay", 0), ("replay", 0), ("eager", 7)]


@cuda
def test_scripts_end_to_end_on_cuda(tmp_path):
    """train.py (CUDA graphs, tensor pipeline on the GPU), test.py and test_train.py with -d cuda."""
    import json

    from tests.helpers import run_script, small_cifar_config, write_cifar100, write_config
    data_dir = write_cifar100(tmp_path / "data", train_per_class=40, test_per_class=3)
    cfg = small_cifar_config(data_dir, tmp_path / "saved", epochs=2)
    cfg["data_loader"]["args"].update(img_max=40)
    cfg["trainer"]["cuda_graph"] = True
    proc = run_script("train.py", "-c", write_config(tmp_path / "c.json", cfg), "--run_id", "g", "-d", "cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "saved" / "small" / "g" / "last.pth"
    saved = torch.load(ckpt, weights_only=True)  # written from the CPU: loads on machines without a GPU
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    proc = run_script("test.py", "-r", ckpt, "-d", "cuda", "--out", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads((tmp_path / "e.json").read_text())["distributions"]) == 11
    proc = run_script("test_train.py", "-c", "configs/test_time_cifar100_tade.json", "-r", ckpt, "-d", "cuda",
                      "--distributions", "uniform", "--epochs", "1", "--out", tmp_path / "t.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads((tmp_path / "t.json").read_text())["distributions"]["uniform"]["weights"]) == 3
