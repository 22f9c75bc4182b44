"""Data parallelism across processes and machines, on top of the two-tower model.

Launched by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), each process owns two GPUs in two-tower mode (cuda:2*LOCAL_RANK and the next one) or
one in grouped mode, and wraps its model in ``DistributedDataParallel`` with ``device_ids=None``
(the multi-device form: model parallel inside a process, data parallel across processes). The
backend is NCCL on GPUs and gloo on the CPU, where the same code runs for testing. Gradients are
averaged across ranks, so each rank takes ``batch_size / world_size`` images of the global batch.

Host values (stop flags, losses already read, counts) are combined over a gloo group on the CPU
(the default group under gloo, a second group beside NCCL), so agreeing on them never waits for a
GPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    host_group: object = field(default=None, compare=False, repr=False)  # gloo group for host values (init)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env=None) -> DistContext:
    """The process's place in a torchrun job (a single process when the variables are absent).

    Half a torchrun environment (RANK without WORLD_SIZE, a WORLD_SIZE below 1, a RANK outside it) is
    one sentence: such a process would otherwise run alone, or never start, without saying why.
    """
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE, LOCAL_RANK must be integers; launch with torchrun") from None
    hint = "launch with torchrun, or unset RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE to train in one process"
    if "WORLD_SIZE" not in env and any(name in env for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        found = ", ".join(f"{name}={env[name]}" for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE") if name in env)
        raise UserError(f"the environment has {found} but no WORLD_SIZE (half a torchrun environment); {hint}")
    if world < 1 or local_world < 1:
        raise UserError(f"WORLD_SIZE={world} and LOCAL_WORLD_SIZE={local_world} must be 1 or more; {hint}")
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise UserError(f"RANK={rank} must be 0 .. WORLD_SIZE-1 ({world - 1}) and LOCAL_RANK={local_rank} 0 .. "
                        f"LOCAL_WORLD_SIZE-1 ({local_world - 1}); {hint}")
    return DistContext(rank, world, local_rank, local_world)


def check_rendezvous(ctx: DistContext, env=None) -> None:
    """UserError when a job of several processes lacks the address they meet at (torchrun sets it)."""
    env = os.environ if env is None else env
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if ctx.enabled and missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UserError(f"WORLD_SIZE={ctx.world_size} but {' and '.join(missing)} {verb} not set, so the processes "
                        "cannot meet; launch with torchrun (it sets them), or unset "
                        "WORLD_SIZE and RANK to train in one process")


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """The images each rank takes of the global batch; UserError when they do not divide evenly."""
    if batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {batch_size} does not divide across {ctx.world_size} processes; "
                        f"set it to a multiple of {ctx.world_size}")
    return batch_size // ctx.world_size


def init(ctx: DistContext, use_cuda: bool, timeout_s: int = 1800) -> DistContext:
    """Join the process group (NCCL on GPUs, gloo on the CPU); a no-op for a single process.

    Returns ``ctx`` with its ``host_group``: the group that combines host values (gloo).
    """
    if not ctx.enabled:
        return ctx
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=ctx.rank, world_size=ctx.world_size,
                                timeout=timeout)
    group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    return replace(ctx, host_group=group)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` across ranks (multi-device form), or ``model`` alone."""
    if not ctx.enabled:
        return model
    # broadcast_buffers=False: the only buffers are the dropout streams' keys, which differ by rank on purpose
    return DistributedDataParallel(model, device_ids=None, output_device=None, broadcast_buffers=False)


def sum_across(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64); ``values`` itself for one process.

    Host values travel over ``ctx.host_group`` (gloo, CPU) when :func:`init` set one, so the call never
    waits for a GPU.
    """
    if not ctx.enabled:
        return list(values)
    if ctx.host_group is not None or dist.get_backend() == "gloo":
        device = "cpu"
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=ctx.host_group)
    return t.tolist()


def any_across(flags: list[bool], ctx: DistContext) -> list[bool]:
    """Element-wise OR of ``flags`` over all ranks, so every rank takes the same decision."""
    if not ctx.enabled:
        return list(flags)
    return [v > 0 for v in sum_across([float(f) for f in flags], ctx)]


def gather(obj, ctx: DistContext) -> list:
    """``obj`` from every rank, in rank order (on every rank)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.host_group)
    return out
