"""Fine-pruning and recovery under FSDP2: each decoder layer sharded across the processes, the scores replicated.

Switched on as accelerate switches it on (`accelerate launch --use_fsdp --fsdp_version 2`, i.e. the environment
ACCELERATE_USE_FSDP=true FSDP_VERSION=2, which torchrun passes through too), and read through accelerate's own
FSDP plugin so its options mean what they mean there. ffnprune applies `fully_shard` itself, one unit per decoder
layer plus the root: accelerate's preparation does not shard on CPU, and the neuron scores must stay whole on every
process (global Top_v and GUM rank all layers at once), so they are left out of the sharding and their gradients
are averaged here. The masks multiply the projections' weights inside the layer's forward, where FSDP has already
gathered them whole.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from ffnprune.errors import FfnpruneError
from ffnprune.messages import logger


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_plugin() -> FullyShardedDataParallelPlugin | None:
    """accelerate's FSDP settings when the launch asked for FSDP, checked for what ffnprune can honour; None
    otherwise. DeepSpeed is refused: its ZeRO stages need their own engine around the model and optimizer."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise FfnpruneError("DeepSpeed is not supported; shard with FSDP2 instead: accelerate launch --use_fsdp "
                            "--fsdp_version 2 ... (or ACCELERATE_USE_FSDP=true FSDP_VERSION=2 under torchrun)")
    if not _flag("ACCELERATE_USE_FSDP"):
        return None
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise FfnpruneError(f"FSDP version {plugin.fsdp_version} is not supported; ffnprune shards with FSDP2: add "
                            "--fsdp_version 2 to accelerate launch (or set FSDP_VERSION=2)")
    if plugin.activation_checkpointing:
        raise FfnpruneError("FSDP activation checkpointing is not supported with neuron masks; drop "
                            "--fsdp_activation_checkpointing (FSDP_ACTIVATION_CHECKPOINTING)")
    if plugin.cpu_ram_efficient_loading:  # accelerate launch's default
        logger.info("FSDP: every process reads the checkpoint before sharding it (cpu_ram_efficient_loading, which "
                    "loads it on the main process only, is not used)")
    return plugin


def shard(root: nn.Module, layers, plugin: FullyShardedDataParallelPlugin, keep_whole: list[nn.Parameter],
          accelerator) -> None:
    """fully_shard every decoder layer in `layers`, then `root` with `keep_whole` left replicated. Mixed precision:
    the plugin's policy, else the launch's --mixed-precision as FSDP's compute dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    policy = plugin.mixed_precision_policy or MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32
                                                                   if compute is not None else None)
    device = accelerator.device
    settings = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload,
                "mp_policy": policy, "mesh": init_device_mesh(device.type, (dist.get_world_size(),))}
    root.to(device)
    for layer in layers:
        fully_shard(layer, **settings)
    fully_shard(root, ignored_params=set(keep_whole), **settings)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a sharded parameter (a collective: every process must call it); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; others as they are."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Mean of the replicated parameters' gradients over the processes (what DDP would have done for them)."""
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)  # a sum: gloo has no average
            parameter.grad /= dist.get_world_size()


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Clip by the norm of all gradients, sharded and replicated together, as one process would compute it."""
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for grad in grads:
        norm = torch.linalg.vector_norm(grad, dtype=torch.float64)
        squares = squares + (norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2
    factor = torch.clamp(max_norm / (squares.sqrt() + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(factor.to(grad.dtype))


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules with weights on the meta device (buffers kept: rotary tables are not saved),
    to receive the full trained state on the main process once the model itself is sharded."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def gathered(model: nn.Module, skeleton: nn.Module, is_main: bool) -> nn.Module | None:
    """The sharded `model`'s full state in `skeleton` on the main process (None elsewhere): a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    skeleton.load_state_dict(state, strict=True, assign=True)
    if getattr(skeleton.config, "tie_word_embeddings", False):
        skeleton.tie_weights()
    return skeleton
