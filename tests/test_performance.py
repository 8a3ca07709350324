"""Precision and layout options: each trains and evaluates through the real Trainer on CPU with a
finite loss; bad values are one-line config errors; compiling keeps checkpoint keys."""
import math
import re

import pytest
import torch

from data_loader.digits_lt import DigitsLTDataLoader
from model.loss.diverse_expert_loss import DiverseExpertLoss
from model.model import ResNet32Model
from model.resnet_cifar import ExpertResNetCifar
from trainer import Trainer
from utils.errors import UserError
from tests.helpers import run_entry
from utils.parse_config import ConfigParser
from utils.performance import Performance
from utils.runtime import Runtime


@pytest.fixture(scope="module")
def digits():
    return {p: DigitsLTDataLoader(img_max=12, imb_factor=0.5, batch_size=32, pipeline=p) for p in ("tensor", "pil")}


@pytest.mark.parametrize("autocast,channels_last,pipeline", [
    (None, False, "pil"), (None, True, "tensor"), ("bf16", False, "tensor"), ("bf16", True, "tensor"),
    ("fp16", True, "tensor"), ("bf16", True, "pil")])
def test_option_trains_and_evaluates(digits, tmp_path, autocast, channels_last, pipeline):
    data = digits[pipeline]
    trainer_cfg = {"epochs": 1, "tensorboard": False, "monitor": "off", "autocast": autocast,
                   "channels_last": channels_last, "compile": False, "cudnn_benchmark": True}
    config = ConfigParser({"trainer": trainer_cfg, "seed": 0}, source="test")
    perf = Performance.from_config(trainer_cfg)
    torch.manual_seed(0)
    # ResNet-8 (one block per stage): the ResNet-32 code path at a fifth of the cost.
    net = perf.apply_layout(ExpertResNetCifar((1, 1, 1), num_classes=10, num_experts=3, reduce_dimension=True))
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = perf.grad_scaler("cpu")
    assert (scaler is not None) == (autocast == "fp16")
    trainer = Trainer(net, DiverseExpertLoss(data.cls_num_list), optimizer, None, config, Runtime(torch.device("cpu")),
                      data, scaler=scaler)
    log = trainer._train_epoch(0)
    assert math.isfinite(log["loss"]) and log["loss"] > 0
    changed = any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # fp16: the scaler starts at 2**16 and skips steps whose gradients overflow, lowering the scale.
    assert changed or (scaler is not None and scaler.get_scale() < 2.0 ** 16)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    val = trainer._valid_epoch(0)
    assert 0.0 <= val["val_accuracy"] <= 1.0


def test_prepare_input_layout():
    x = torch.randn(2, 3, 8, 8)
    fast = Performance(channels_last=True).prepare_input(x, "cpu")
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, x)
    plain = Performance().prepare_input(fast, "cpu")
    assert plain.is_contiguous() and torch.equal(plain, x)


def test_compile_keeps_module_and_checkpoint_keys():
    # Only the wiring: compiling ResNet-32 with inductor takes minutes on 2 CPU cores.
    net = ResNet32Model(num_classes=10, num_experts=1)
    keys = list(net.state_dict())
    out = Performance(compile=True).maybe_compile(net)
    assert out is net and list(out.state_dict()) == keys


@pytest.mark.parametrize("key,value,fragment", [
    ("autocast", "fp8", "trainer.autocast"), ("channels_last", "yes", "trainer.channels_last"),
    ("compile", 1, "trainer.compile"), ("cudnn_benchmark", None, "trainer.cudnn_benchmark")])
def test_bad_values_are_user_errors(key, value, fragment):
    with pytest.raises(UserError, match=fragment):
        Performance.from_config({key: value}, "c.json")


def test_missing_keys_mean_plain_fp32():
    perf = Performance.from_config({})
    # fold_batchnorm is the one key on when missing: evaluation only, the same logits up to rounding
    assert perf == Performance(autocast=None, channels_last=False, compile=False, cudnn_benchmark=False,
                               fold_batchnorm=True)
    assert perf.grad_scaler("cpu") is None and perf.amp_dtype("cpu") is None


def test_compute_ceiling_bench_reports_flops_steps_and_matmul_rates(capfd):
    code, out, err = run_entry("bench/speed/speed.py", ["ceiling", "--steps", "1", "--batch", "8", "--matmul", "256"],
                               capfd)
    assert code == 0, err[-2000:]
    flops = float(re.search(r"([0-9.]+) GFLOP per training image", out).group(1))
    assert 0.9 < flops < 1.0  # ResNet-32, 3 experts, 32 px: 0.950 GFLOP forward + backward
    steps = re.findall(r"bare training step, (.+?): ([0-9]+) images/s .*convolutions take ([0-9]+) %", out)
    configured = Performance(autocast="auto").precision("cpu")  # bf16 on CPUs that compute it natively
    assert [s[0] for s in steps] == ["plain fp32 NCHW", f"configured ({configured}, channels_last)"]
    assert all(int(s[1]) > 0 and 0 < int(s[2]) <= 100 for s in steps)
    assert re.search(r"matrix product 256\^3, float32: [0-9]+ GFLOP/s", out)
    assert bool(re.search(r"matrix product 256\^3, bfloat16: [0-9]+ GFLOP/s", out)) == (configured == "bf16")
    forward = re.findall(r"bare inference pass, .+?: [0-9]+ images/s = [0-9]+ GFLOP/s \(([0-9.]+) GFLOP per image\)",
                         out)
    assert len(forward) == 2 and all(abs(float(f) - flops / 3) < 0.01 for f in forward)  # forward ~ a third
    bound = float(re.search(r"so folding can give at most ([0-9.]+)x", out).group(1))
    assert bound >= 1.0
    assert re.search(r"the folded pass runs at [0-9]+ % of the matrix-product rate", out)


def test_auto_autocast_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    import utils.performance as performance
    perf = Performance.from_config({"autocast": "auto"})
    for native in (True, False):
        monkeypatch.setattr(performance, "native_bf16", lambda device, native=native: native)
        assert perf.amp_dtype("cpu") is (torch.bfloat16 if native else None)
        assert perf.precision("cpu") == ("bf16" if native else "fp32")
        assert isinstance(perf.autocast_context("cpu"), torch.autocast) == native
    monkeypatch.undo()
    assert Performance(autocast="bf16").amp_dtype("cpu") is torch.bfloat16  # explicit bf16 stays bf16


@pytest.mark.parametrize("capability, onednn_cap, native", [
    ("AVX512", None, True), ("AVX512", "ALL", True), ("AVX512", "AVX512_CORE_BF16", True),
    ("AVX512", "avx512_core_amx", True), ("AVX2", None, False), ("AVX2", "AVX2", False), ("DEFAULT", None, False),
    ("AVX512", "AVX2", False), ("AVX512", "AVX512_CORE", False), ("AVX512", "AVX512_CORE_VNNI", False)])
def test_auto_autocast_follows_what_the_process_may_use_not_only_the_hardware(monkeypatch, capability, onednn_cap,
                                                                             native):
    """On a CPU with AVX512-BF16, a process capped to AVX2 (``ATEN_CPU_CAPABILITY=avx2``, or oneDNN's
    ``ONEDNN_MAX_CPU_ISA``) would only emulate bf16: "auto" is fp32 there."""
    import utils.performance as performance
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)
    assert performance.native_bf16("cpu") is native
    assert Performance(autocast="auto").precision("cpu") == ("bf16" if native else "fp32")


def test_auto_autocast_is_fp32_in_a_process_capped_to_avx2():
    """The caps as a user sets them, read by a fresh interpreter at start-up (the AVX2 kind's CI settings)."""
    import os
    import subprocess
    import sys
    from tests.helpers import ROOT
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    code = "from utils.performance import Performance; print(Performance(autocast='auto').precision('cpu'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "fp32"
