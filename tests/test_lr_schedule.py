import pytest
import torch

from trainer.lr_scheduler import WarmupStepLR


def lrs_by_epoch(epochs=200):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = WarmupStepLR(opt, step1=160, step2=180, gamma=0.1, warmup_epoch=5)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("epoch,lr", [(1, 0.02), (2, 0.04), (4, 0.08), (5, 0.1), (6, 0.1), (160, 0.1),
                                      (161, 0.01), (180, 0.01), (181, 0.001), (200, 0.001)])
def test_cifar_schedule_by_one_based_epoch(epoch, lr):
    assert lrs_by_epoch()[epoch - 1] == pytest.approx(lr)


def test_schedule_resumes_from_state_dict():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = WarmupStepLR(opt, 160, 180, 0.1, 5)
    for _ in range(170):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = WarmupStepLR(opt2, 160, 180, 0.1, 5)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    for _ in range(15):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001)
