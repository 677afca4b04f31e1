"""torch.distributed for the training loops: one code path for a plain process, ``torchrun`` + DDP, and FSDP.

* A plain ``python`` process (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) runs unwrapped.
* Under ``torchrun --nproc_per_node N`` the process group is initialised from the environment (``nccl`` when
  CUDA is used, ``gloo`` on CPU) and the model is wrapped in DDP; or, with ``parallel="fsdp"``, sharded with
  FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per decoder layer (the classes a HF model names in
  ``_no_split_modules``, else any ``*DecoderLayer``), then the root; for backbones whose weights plus Adam
  state do not fit one GPU. Both are tested on CPU with gloo (2 ranks vs 1 process, FSDP resume); FSDP on
  nccl/GPU has not been run yet.
* A caller that initialised the process group itself (``mp.spawn``, a notebook) keeps it: we only tear down
  what we set up.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Parallel = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # we called init_process_group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` gets the local rank."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join (or create, from torchrun's environment) the default process group and pick this rank's device."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        backend = dist.get_backend()
        if device == "auto" and backend != "nccl":
            device = "cpu"
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local_rank, dev, backend, owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev, None, owns_group=False)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, owns_group=True)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process); returns ``tensor``."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=info.device if info.backend == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Data parallelism without a wrapper: every gradient becomes its mean over ranks (one flat all-reduce per
    dtype). For loops whose loss does not run through the module's ``forward``, which DDP hooks into (GRPO-SR
    calls the model's layout, decoder and head blocks separately). A missing gradient counts as zeros."""
    if not info.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= info.world_size
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated along dim 0, in rank order."""
    if not info.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if m is not model and (
        type(m).__name__ in names or (not names and type(m).__name__.endswith("DecoderLayer")))]
    return units


def wrap_model(model: nn.Module, info: DistInfo, parallel: Parallel = "ddp", *,
               find_unused_parameters: bool = False) -> nn.Module:
    """DDP- or FSDP-wrap ``model`` (already on ``info.device``); unchanged in a single process."""
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    if not info.distributed:
        return model
    if parallel == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for unit in _fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's forward+backward: gradients are all-reduced only when ``sync`` (the last
    micro-batch of an accumulation step)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        return model.no_sync()
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Unsharded, CPU model (and optimiser) state dicts. A collective under FSDP (every rank must call it);
    the plain ``state_dict()`` otherwise."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
        return msd, osd
    module = unwrap(model)
    return module.state_dict(), (optimizer.state_dict() if optimizer is not None else None)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
    """Load a state saved by :func:`full_state_dicts` (every rank passes the full dict). Model weights are
    loaded into the whole module before it is wrapped, so tied weights need no special case."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optim_state)
