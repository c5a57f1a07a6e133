"""Many processes under torchrun: who this process is, FSDP2 sharding, collectives.

One training loop serves one process and many. `Distributed` says who this process is; with a
world of 1 every collective is a no-op and nothing is sharded, so single-process training runs
exactly the code it ran before. Under torchrun (nccl on GPUs, gloo on CPU) every transformer block
is sharded with `fully_shard`, then the root; on GPUs in bf16 the parameters are gathered in bf16
while gradients are reduced in fp32. Which rows each rank runs in a step is data.batches' choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

# rank_rows, rank_micro_batches: public here before data/batches.py
from codeinstruct.data.batches import rank_micro_batches, rank_rows  # noqa: F401
from codeinstruct.devices import pick_device
from codeinstruct.errors import CodeinstructError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.sharded:
            torch.distributed.barrier()

    def sum(self, value: float) -> float:
        if not self.sharded:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request seen by one rank)."""
        return self.sum(1.0 if flag else 0.0) > 0

    def close(self) -> None:
        if self.sharded and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str) -> Distributed:
    """This process's place in the job (torchrun's environment), with the process group started."""
    world = world_size_from_env()
    if world == 1:
        return Distributed(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if pick_device(device_name).type == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
    return Distributed(rank=rank, world=world, local_rank=local_rank, device=device)


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes the model names as never to be split."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names |= set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise CodeinstructError(f"{type(base).__name__}: cannot find its transformer blocks to shard with FSDP")
    return blocks


def shard_model(model, dist: Distributed, bf16: bool, cpu_offload: bool):
    """FSDP2: each block, then the root. Parameters become DTensors sharded over the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model) -> dict:
    """Every parameter whole, on CPU, on rank 0 (a collective: all ranks must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
