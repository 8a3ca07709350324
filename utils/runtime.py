"""Where the code runs: CPU, one GPU, DataParallel (``-d 0,1``) or torchrun DDP (env variables).

The same training code serves all four; only model wrapping, samplers and metric reduction differ.
"""
import contextlib
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from utils.errors import UserError, mark_group_process


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

    def all_reduce_min(self, tensor):
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the run folder, which only rank 0 creates)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def fail_together(self):
        """Run a block on every rank; if it fails on any rank, it fails on all of them.

        Without this, an error seen by one rank only (rank 0 finds the run folder exists; one node
        lacks the data) ends that process while the others wait forever in the next collective.
        The block must not itself communicate. A rank whose block raised re-raises its own error;
        the others raise the lowest failing rank's message: a ``UserError`` (one line, exit 2) when
        that was bad input, otherwise a ``PeerFailed`` (one line, exit 1; the traceback is on the
        failing rank)."""
        error = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        if self.distributed:
            mine = None if error is None else (isinstance(error, UserError), _one_line(error))
            reports = [None] * self.world_size
            dist.all_gather_object(reports, mine)
            if error is None:
                for rank, report in enumerate(reports):
                    if report is not None:
                        user, message = report
                        raise UserError(message) if user else PeerFailed(f"process {rank} failed: {message}")
        if error is not None:
            raise error


class PeerFailed(UserError):
    """Another process failed with a bug (its traceback is in its own output)."""
    exit_code = 1


def _one_line(error):
    text = " ".join(str(error).split())
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


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


def _env_int(name, default=None):
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise UserError(f"environment variable {name} is not set; start several processes with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)")


def setup_runtime(device_arg=None):
    """One process, or one of WORLD_SIZE processes started by torchrun (RANK, LOCAL_RANK, and
    MASTER_ADDR/MASTER_PORT in the environment): NCCL with GPU LOCAL_RANK, else gloo on CPU."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        device, ids = parse_device(device_arg)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Runtime(device=device, device_ids=ids)
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    if device_arg not in (None, "", "cpu", "cuda"):
        raise UserError(f"-d {device_arg}: under torchrun use -d cuda or -d cpu; each process takes GPU LOCAL_RANK")
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if device_arg == "cuda" and not use_cuda:
        raise UserError("-d cuda: CUDA is not available on this machine; use -d cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process with LOCAL_RANK {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many processes per machine "
                            "(torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    mark_group_process()
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_runtime(runtime):
    """Leave the process group once every rank is done with it (a barrier, then
    ``destroy_process_group``). On the way out of an error it is left to the process's exit:
    destroying a gloo group whose peer has already gone can abort the process (SIGABRT) instead of
    exit code 2. Either way the process then ends with ``os._exit`` (``utils/errors._exit``)."""
    if runtime.distributed and dist.is_initialized() and sys.exc_info()[0] is None:
        try:
            dist.barrier()
        except Exception as e:  # noqa: BLE001 - a peer that ended with an error (its own line says why)
            raise PeerFailed(f"another process ended before this one finished ({_one_line(e)})") from None
        dist.destroy_process_group()


def wrap_model(model, runtime):
    """Move to the device and wrap for DataParallel or DDP as the runtime asks (global-batch
    BatchNorm, ``trainer.sync_batchnorm``, is converted before: ``trainer/build.py``)."""
    model = model.to(runtime.device)
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if runtime.device_ids:
        return torch.nn.DataParallel(model, device_ids=runtime.device_ids)
    return model


def unwrap(model):
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model
