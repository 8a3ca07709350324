"""Calibration fitting for the label-shift methods (docs/methods.md#prior-estimation): temperature
scaling and, with a bias, bias-corrected temperature scaling (Alexandari et al. 2020), by the
(class-weighted) NLL of labelled images' mean logits. The methods (label_shift.py) decide which
images and weights; this module only fits."""
import math

import torch

from utils.errors import UserError


def fit_calibration(z, targets, fit_temperature=True, fit_bias=False, temperature=1.0, max_iter=200,
                    max_elements=1 << 25, class_weights=None):
    """Fit 1/T (and a per-class bias b) by the NLL of ``targets`` under softmax(z / T + b).

    ``class_weights`` [C]: each image of class y counts ``class_weights[y]`` in the NLL (None: every
    image counts 1), so the fit is the one for a set with class frequencies proportional to
    counts x weights. The NLL is convex in (1/T, b), so L-BFGS finds the optimum. Sets larger than
    ``max_elements`` numbers are fitted on a fixed random subset of rows (seed 0). Returns (T, b
    [C] float64 or None).
    """
    z = torch.as_tensor(z)
    y = torch.as_tensor(targets).long()
    if z.shape[0] * z.shape[1] > max_elements:
        rows = max(1, max_elements // z.shape[1])
        keep = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:rows]
        z, y = z[keep], y[keep]
    z = z.double()
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)[y]
    if z.shape[0] == 0:
        raise ValueError("calibration: the reference set is empty")
    c = z.shape[1]
    beta = torch.tensor([1.0 / float(temperature)], dtype=torch.float64, requires_grad=fit_temperature)
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=fit_bias)
    params = [p for p in (beta, bias) if p.requires_grad]
    if not params:
        return float(temperature), None
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if w is None:
            loss = torch.nn.functional.cross_entropy(z * beta + bias, y)
        else:
            loss = (torch.nn.functional.cross_entropy(z * beta + bias, y, reduction="none") * w).sum() / w.sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    b = float(beta.detach())
    if not math.isfinite(b) or b <= 0:
        raise UserError(f"calibration: the fitted inverse temperature {b:g} is not positive (do the calibration "
                        "logits predict their labels at all?); expected a fitted temperature > 0, or set "
                        "test_time.args.temperature to a number")
    return 1.0 / b, (bias.detach().clone() if fit_bias else None)
