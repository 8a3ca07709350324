"""Where the code runs: CPU, one GPU, DataParallel (``-d 0,1``) or torchrun DDP (env variables).

The same training code serves all four; only model wrapping, samplers and metric reduction differ.
"""
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from utils.errors import UserError


@dataclass
class Runtime:
    device: torch.device
    device_ids: list = field(default_factory=list)  # DataParallel GPUs (more than one)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor):
        """Sum a tensor over ranks (no-op in one process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def parse_device(arg):
    """``cpu``, ``cuda``, ``cuda:N`` or a GPU list ``0,1`` -> (device, DataParallel ids)."""
    if arg is None or arg == "":
        return (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")), []
    arg = str(arg).strip()
    if arg == "cpu":
        return torch.device("cpu"), []
    if arg == "cuda" or arg.startswith("cuda:") or all(p.strip().isdigit() for p in arg.split(",")):
        if not torch.cuda.is_available():
            raise UserError(f"-d {arg}: CUDA is not available on this machine; use -d cpu")
        if arg == "cuda":
            return torch.device("cuda", 0), []
        try:
            ids = [int(arg[5:])] if arg.startswith("cuda:") else [int(p) for p in arg.split(",")]
        except ValueError:
            raise UserError(f"-d {arg}: expected cpu, cuda, cuda:N or a GPU list like 0,1")
        n = torch.cuda.device_count()
        bad = [i for i in ids if i >= n]
        if bad:
            raise UserError(f"-d {arg}: GPU {bad[0]} does not exist (this machine has {n})")
        return torch.device("cuda", ids[0]), (ids if len(ids) > 1 else [])
    raise UserError(f"-d {arg}: expected cpu, cuda, cuda:N or a GPU list like 0,1")


def setup_runtime(device_arg=None):
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or fall back to one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device, ids = parse_device(device_arg)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Runtime(device=device, device_ids=ids)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg not in (None, "", "cpu", "cuda"):
        raise UserError(f"-d {device_arg}: under torchrun use -d cuda or -d cpu; each process takes GPU LOCAL_RANK")
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_runtime(runtime):
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model, runtime, sync_batchnorm=False):
    """Move to the device and wrap for DataParallel or DDP as the runtime asks."""
    if runtime.distributed and sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(runtime.device)
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if runtime.device_ids:
        return torch.nn.DataParallel(model, device_ids=runtime.device_ids)
    return model


def unwrap(model):
    return model.module if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else model
