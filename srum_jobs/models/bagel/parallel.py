"""What trains and how it is spread: the trainable expert, activation checkpointing, FSDP/HSDP, and the
`training_params` registry hook that sets them from the experiment's training section."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import torch

from ..common import ParamError
from .nemo import WHAT


class Parallel:
    """BagelModel's training set-up (mixin)."""

    def _select_trainable(self) -> None:
        gen = [re.compile(p) for p in self.n.sd.GEN_PATTERNS]
        self._trainable_names: List[str] = []
        for name, param in self.model.named_parameters():
            key = name.removeprefix("model.")
            want = self.trainable == "all" or any(r.search(key) for r in gen)
            if key.endswith("pos_embed"):
                want = False   # fixed sine-cosine tables
            param.requires_grad_(want)
            if want:
                self._trainable_names.append(name)
        if self.trainable == "gen":
            # Und-side activations of the pack carry no gradient when only the generation expert learns.
            self.config.text_config.freeze_und = True

    def _activation_checkpointing(self) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

        layers = self.model.model.language_model.model.layers
        for i, layer in enumerate(layers):
            layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)

    def _shard(self, mode: str, replicas: Optional[int]) -> None:
        """FSDP2: each decoder layer, then the root. `hybrid` shards within a replica group (a node) and
        replicates across groups (HSDP). Needs an initialised process group (torchrun) and CUDA."""
        import os

        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            raise ParamError(f"{WHAT}: fsdp={mode} needs torch.distributed initialised (run under torchrun)")
        world = dist.get_world_size()
        dev = self.device.type
        if mode == "hybrid":
            groups = replicas or max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            if world % groups:
                raise ParamError(f"{WHAT}: fsdp_replicas={groups} does not divide the world size {world}")
            mesh = init_device_mesh(dev, (groups, world // groups), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(dev, (world,), mesh_dim_names=("shard",))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in self.model.model.language_model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        # The root keeps its float32 inputs: NeMo draws the flow noise like the clean latent it is given,
        # and the adapter replays that draw in float32 (autocast still runs the root's matmuls in bf16).
        fully_shard(self.model, mesh=mesh, mp_policy=MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False))
        self.handles_data_parallel = True   # gradients are reduced by FSDP, not by the train stage's hooks


def training_params(training: Any) -> Dict[str, str]:
    """The `training_params` hook: Bagel shards itself (FSDP over the nodes, HSDP across them) and can
    checkpoint activations, both set from the experiment's training section."""
    return {"fsdp": ("hybrid" if training.nnodes > 1 else "full") if training.fsdp else "off",
            "activation_checkpointing": str(training.activation_checkpointing).lower()}
