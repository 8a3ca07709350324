"""How close a training step is to this machine's arithmetic limit: the training FLOPs per image of
a config's network (``torch.utils.flop_counter``, forward + backward), the bare training step
(random batch, no data pipeline, no logging) in plain fp32 NCHW and in the configured precision
and layout, and the machine's large-matrix-product rate in fp32 and in the autocast dtype; then the
bare inference pass (no gradients, eval mode, the configured precision and layout) as trained and
with batch norm folded into the convolutions (model/fold_batchnorm.py), in images and GFLOP per
second (forward FLOPs from the counter), with the share of the as-trained pass's operator time spent
in batch norm's own operators on the CPU (torch.profiler) and the speed-up that share allows a fold
at most (folding removes those operators and nothing else: 1 / (1 - share)); last, the folded
pass's FLOP rate as a share of the matrix-product rate in its precision. The bare rates come from a
few batches and vary between runs; the pass over real test images (``speed.py test-time-views``)
is the figure to quote for folding.

A step whose FLOP rate is near the matrix-product rate cannot get much faster by precision,
layout or fusion: only less arithmetic would help.
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import model.loss as losses
from model.fold_batchnorm import folded_copy
from trainer.build import build_model, build_performance, resolve_config
from utils.cli import positive_int
from utils.performance import Performance


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg, device, perf):
    net = perf.apply_layout(build_model(cfg).to(device)).train()
    classes = cfg["arch"]["args"]["num_classes"]
    counts = [max(1, int(1000 * 0.01 ** (c / max(1, classes - 1)))) for c in range(classes)]
    criterion = cfg.init_obj("loss", losses, cls_num_list=counts).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return net, criterion, optimizer, classes


def rate_and_share(run, device, batch, steps, ops):
    """Images per second of ``steps`` calls of ``run`` on a batch of ``batch`` (after two warm-up
    calls), and on the CPU the share of two more calls' self operator time spent in ``ops``
    (torch.profiler; None elsewhere)."""
    for _ in range(2):  # warm-up
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    if device.type != "cpu":
        return rate, None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            run()
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    return rate, sum(t for k, t in times.items() if k in ops) / sum(times.values())


def step_rate(cfg, device, perf, batch, steps, size=32):
    """Images per second of bare training steps (after two warm-up steps), and on the CPU the share
    of the step's operator time spent in convolutions (forward and backward, torch.profiler)."""
    torch.manual_seed(0)
    net, criterion, optimizer, classes = build(cfg, device, perf)
    x = perf.prepare_input(torch.randn(batch, 3, size, size), device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        with perf.autocast_context(device):
            loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return rate_and_share(step, device, batch, steps, ("aten::mkldnn_convolution", "aten::convolution_backward"))


BATCH_NORM_OPS = ("aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training", "aten::batch_norm",
                  "aten::_batch_norm_impl_index", "aten::_native_batch_norm_legit")


def eval_rate(cfg, device, perf, batch, steps, fold, size=32):
    """(images per second of bare inference passes, batch norm's share of their self operator time on
    the CPU or None, number of folded batch norms)."""
    torch.manual_seed(0)
    net = perf.apply_layout(build_model(cfg).to(device)).eval()
    with torch.no_grad():  # running statistics other than the initial ones, as a trained network has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    folded = 0
    if fold:
        net, folded = folded_copy(net, perf.prepare_input(torch.randn(2, 3, size, size), device))
        net = perf.apply_layout(net)
    x = perf.prepare_input(torch.randn(batch, 3, size, size), device)

    def run():
        with torch.no_grad(), perf.autocast_context(device):
            net(x)

    rate, share = rate_and_share(run, device, batch, steps, BATCH_NORM_OPS)
    return rate, share, folded


def train_flops_per_image(cfg, size=32):
    net = build_model(cfg).train()
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(4, 3, size, size))["logits"].float().sum().backward()
    return counter.get_total_flops() / 4


def inference_flops_per_image(cfg, size=32):
    net = build_model(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(4, 3, size, size))
    return counter.get_total_flops() / 4


def matmul_rate(device, dtype, n=4096, repeats=5):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def add_arguments(p):
    p.add_argument("--steps", type=positive_int, default=8)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--matmul", type=positive_int, default=4096, help="size n of the n x n matrix product")


def run(args):
    device = torch.device(args.device)
    cfg, _ = resolve_config(args.config, sections=("arch", "loss"))
    fast = build_performance(cfg)
    flops = train_flops_per_image(cfg)
    print(f"{cfg['name']}: {flops / 1e9:.3f} GFLOP per training image (forward + backward, flop_counter)")
    for name, perf in (("plain fp32 NCHW", Performance()), (f"configured ({fast.precision(device)}, "
                       f"{'channels_last' if fast.channels_last else 'NCHW'})", fast)):
        rate, conv_share = step_rate(cfg, device, perf, args.batch, args.steps)
        line = f"  bare training step, {name}: {rate:.0f} images/s = {rate * flops / 1e9:.0f} GFLOP/s"
        if conv_share is not None:  # convolutions are nearly all of the FLOPs
            line += (f"; convolutions take {100 * conv_share:.0f} % of the operator time and run at about "
                     f"{rate * flops / conv_share / 1e9:.0f} GFLOP/s, the rest (batch norm, ReLU, additions, "
                     f"optimiser) is memory-bound")
        print(line)
    forward = inference_flops_per_image(cfg)
    rates = {}
    for fold in (False, True):
        rates[fold], share, folded = eval_rate(cfg, device, fast, args.batch, args.steps, fold)
        name = f"folded ({folded} batch norms)" if fold else "as trained"
        line = (f"  bare inference pass, {fast.precision(device)}, {name}: {rates[fold]:.0f} images/s = "
                f"{rates[fold] * forward / 1e9:.0f} GFLOP/s ({forward / 1e9:.3f} GFLOP per image)")
        if share is not None and not fold:  # folding removes batch norm's operators and nothing else
            line += (f"; batch norm's own operators take {100 * share:.0f} % of the operator time, so folding "
                     f"can give at most {1 / (1 - share):.2f}x")
        print(line)
    print(f"  folded against as trained: {rates[True] / rates[False]:.2f}x")
    for dtype in dict.fromkeys((torch.float32, fast.amp_dtype(device) or torch.float32)):
        product = matmul_rate(device, dtype, args.matmul)
        print(f"  {device.type} matrix product {args.matmul}^3, {str(dtype).replace('torch.', '')}: "
              f"{product / 1e9:.0f} GFLOP/s")
    print(f"  the folded pass runs at {100 * rates[True] * forward / product:.0f} % of the matrix-product rate in its "
          "precision: near 100 %, only less arithmetic makes it faster")
