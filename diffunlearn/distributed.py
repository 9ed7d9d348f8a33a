"""FSDP2 support for the trainer: the Accelerator, tensors that may be shards, and the full weights after training.

Under FSDP2 (torch `fully_shard`, which accelerate applies in `prepare`) every parameter becomes a `DTensor` whose
local part is one slice along dim 0, and so does its gradient. Element-wise work (a saliency mask, `grad *= mask`,
restoring masked elements) then runs on the local slice unchanged, but reductions need care: `int(t.sum())` of a
sharded DTensor is the local sum only, so global counts go through `sum_over_shards` explicitly.

accelerate 1.15 turns FSDP on only for accelerator devices: with `use_cpu` it quietly runs DDP instead. torch's
`fully_shard` works on CPU with gloo, and so does accelerate's FSDP2 code (prepare, clipping, `save_state` /
`load_state`) once its state says FSDP, so `make_accelerator` switches a CPU process group to FSDP2 when FSDP was
asked for (ACCELERATE_USE_FSDP=true with ACCELERATE_USE_CPU=1); the CPU FSDP test runs that way.
"""

from __future__ import annotations

import copy
import logging
import os

import accelerate
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env, reduce
from torch.distributed.tensor import DTensor, distribute_tensor

from .errors import UserError

logger = logging.getLogger(__name__)


def fsdp_requested() -> bool:
    """Whether the launch asks for FSDP (`accelerate launch` with an FSDP config, or ACCELERATE_USE_FSDP=true)."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def use_cpu() -> bool:
    """Run on the CPU: asked for (ACCELERATE_USE_CPU=1, `accelerate launch --cpu`), or several processes were
    launched on a machine without CUDA (e.g. configs/accelerate/cpu_2proc.yaml, whose launcher does not set the
    flag): they then form one gloo group instead of each running alone."""
    import torch

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())


def make_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator(**kwargs)` that runs FSDP2 wherever FSDP was asked for, CPU process groups included.

    Raises:
        UserError: FSDP version 1 (the trainer needs FSDP2's per-parameter shards), or a launch whose processes did
            not join one process group (each would run the whole job alone).
    """
    accelerator = Accelerator(cpu=use_cpu(), **kwargs)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != accelerator.num_processes:
        raise UserError(f"the launcher started {world_size} processes but each sees {accelerator.num_processes}; on "
                        "CPU set ACCELERATE_USE_CPU=1 (or launch with torchrun) so they form one gloo group")
    if fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # the FSDP_* settings of the launch
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        PartialState().distributed_type = DistributedType.FSDP  # AcceleratorState copies PartialState's
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        if accelerator.is_main_process:
            logger.warning("FSDP2 on CPU (gloo): switched on by diffunlearn (accelerate %s enables FSDP on "
                           "accelerators only)", accelerate.__version__)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise UserError("fsdp_version 1 is not supported (the saliency mask needs per-parameter shards); set "
                        "fsdp_config.fsdp_version: 2 (FSDP_VERSION=2)")
    return accelerator


# --- tensors that may be FSDP shards --------------------------------------------------------------------------------
def global_draw(draw, local_size: int, shard: tuple) -> torch.Tensor:
    """Random draws for a batch that is rows index::count of a global batch split over processes (`shard`, see
    `Trainer.shard`): `draw(n)` is made for the global batch and this process keeps its rows, so a sample's draw
    (timestep, noise, dropout, new label) does not depend on the number of processes."""
    index, count = shard
    return draw(local_size * count)[index::count]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of `tensor` (the tensor itself unless it is a sharded DTensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of `tensor`; for a DTensor an all-gather, so every process must call it."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A full `tensor` laid out like `reference` (sliced locally, no communication, when that is a DTensor)."""
    if not isinstance(reference, DTensor):
        return tensor
    return distribute_tensor(tensor, reference.device_mesh, reference.placements, src_data_rank=None)


def sum_over_shards(value: torch.Tensor, reference) -> torch.Tensor:
    """Sum a per-process partial `value` over the processes holding shards of `reference` (no-op if unsharded)."""
    if isinstance(reference, DTensor):
        value = value.clone()
        torch.distributed.all_reduce(value, group=reference.device_mesh.get_group())
    return value


def first_shard(tensors: list):
    """The first DTensor among `tensors` (it names the process group to reduce over), or None if none is sharded."""
    return next((t for t in tensors if isinstance(t, DTensor)), None)


def count_true(tensors) -> tuple:
    """(number of True elements, number of elements) over boolean tensors that may be shards."""
    tensors = list(tensors)
    reference = first_shard(tensors)
    counts = torch.tensor([sum(int(local_tensor(t).sum()) for t in tensors),
                           sum(local_tensor(t).numel() for t in tensors)], dtype=torch.int64,
                          device=tensors[0].device if tensors else "cpu")
    kept, total = sum_over_shards(counts, reference).tolist()
    return kept, total


def kth_largest(tensors, k: int) -> torch.Tensor:
    """The k-th largest element of non-negative float `tensors` (which may be shards), exactly, as a 0-dim float32.

    Bisection on the float32 bit patterns, which order non-negative floats like their values: 31 counting passes,
    each a single all-reduce of one number under FSDP, so no process ever holds the other processes' values.
    """
    tensors = list(tensors)
    reference = first_shard(tensors)
    bits = torch.cat([local_tensor(t).detach().float().flatten() for t in tensors]).view(torch.int32)
    low, high = 0, 2 ** 31 - 1  # invariant: at least k elements have bits >= low
    while low < high:
        mid = (low + high + 1) // 2
        if int(sum_over_shards((bits >= mid).sum(), reference)) >= k:
            low = mid
        else:
            high = mid - 1
    return torch.tensor(low, dtype=torch.int32, device=bits.device).view(torch.float32)


# --- the full network after training --------------------------------------------------------------------------------
def parameter_free_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters live on the meta device (no memory); buffers are real copies."""
    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def unshard_module(module: torch.nn.Module, plain_copy: torch.nn.Module) -> None:
    """Turn an FSDP2 `module` back, in place, into the plain module it was, holding the full trained weights.

    `fully_shard` converts a module in place (its class and parameters); `plain_copy` is the module as it was before
    (`parameter_free_copy`). Every process gathers the full weights (collective) and ends with the same plain module,
    as under DDP, so saving (`save_pretrained`) and evaluation work unchanged.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    plain_copy.load_state_dict(state, assign=True)  # assign: the meta parameters take the gathered tensors
    module.__class__ = type(plain_copy)
    object.__setattr__(module, "__dict__", plain_copy.__dict__)


def process_share(count: int) -> list:
    """Indices of the rows (of `count`) this process evaluates: i % num_processes == process_index; all of them
    in one process. The shares of all processes partition range(count)."""
    state = PartialState()
    return list(range(state.process_index, count, state.num_processes))


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """`values` summed element-wise over all processes (itself in one process), on the CPU."""
    return reduce(values.to(PartialState().device), "sum").cpu()
