"""Bagel's training pack and forward: the per-token velocity, its target and the latent grid (FlowOutput),
and the weights' state (master weights, state dicts)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from ..base import FlowOutput
from .nemo import WHAT


def _inverse_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """u with shift * u / (1 + (shift - 1) u) == t (the inverse of the timestep shift)."""
    return t / (shift - (shift - 1.0) * t)


class Training:
    """BagelModel's training half (mixin)."""

    def training_forward(self, images: torch.Tensor, prompts: Sequence[str], t: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> FlowOutput:
        n, mdl = self.n, self.model.model
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{WHAT}: images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        if len(prompts) != b or tuple(t.shape) != (b,):
            raise ValueError(f"{WHAT}: {b} images, {len(prompts)} prompts, t of shape {tuple(t.shape)}")
        gh, gw = self._grid(h, w)
        dev = self.device
        with torch.no_grad():
            latents = self.vae.encode(images.to(dev, torch.float32))            # (B, C, gh p, gw p)
        drop = (torch.rand(b, generator=generator) < self.text_dropout).tolist() if self.text_dropout > 0 else [False] * b
        shift = float(mdl.timestep_shift)
        u = _inverse_shift(t.detach().double().cpu().clamp(1e-6, 1 - 1e-6), shift)
        logits = torch.log(u) - torch.log1p(-u)                                    # NeMo applies sigmoid, then shift

        text_ids, text_idx, pos, vae_idx, lat_pos, masks, sample_lens, steps = [], [], [], [], [], [], [], []
        cur = 0
        for i in range(b):
            splits, modes, rope = [], [], 0
            if not drop[i]:
                ids = self._text_ids(prompts[i])
                text_ids += ids
                text_idx += range(cur, cur + len(ids))
                pos += range(len(ids))
                cur += len(ids)
                rope = len(ids)
                splits.append(len(ids))
                modes.append("causal")
            text_ids.append(self.ids["start_of_image"])
            text_idx.append(cur)
            vae_idx += range(cur + 1, cur + 1 + gh * gw)
            text_ids.append(self.ids["end_of_image"])
            text_idx.append(cur + 1 + gh * gw)
            cur += gh * gw + 2
            pos += [rope] * (gh * gw + 2)
            splits.append(gh * gw + 2)
            modes.append("noise")
            lat_pos.append(self._pos_ids(h, w, self.downsample, max_num_patches_per_side=self.max_latent))
            masks.append(n.data.prepare_attention_mask_per_sample(splits, modes, device=dev))
            sample_lens.append(sum(splits))
            steps += [float(logits[i])] * (gh * gw)

        clean = torch.cat([n.data.patchify(lat, self.p) for lat in latents])      # (B N, p p C), NeMo's token order
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        captured: List[torch.Tensor] = []
        hook = mdl.llm2vae.register_forward_hook(lambda _m, _i, out: captured.append(out))
        as_long = dict(dtype=torch.long, device=dev)
        try:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if dev.type == "cuda" else []), \
                    self._kernels(), self._autocast():
                torch.manual_seed(seed)
                noise = torch.randn_like(clean)            # the same draw NeMo's forward makes under this seed
                torch.manual_seed(seed)
                out = self.model(
                    sequence_length=cur, packed_text_ids=torch.tensor(text_ids, **as_long),
                    packed_text_indexes=torch.tensor(text_idx, **as_long), sample_lens=sample_lens,
                    packed_position_ids=torch.tensor(pos, **as_long), nested_attention_masks=masks,
                    padded_latent=latents, patchified_vae_latent_shapes=[(gh, gw)] * b,
                    packed_latent_position_ids=torch.cat(lat_pos).to(dev),
                    packed_vae_token_indexes=torch.tensor(vae_idx, **as_long),
                    packed_timesteps=torch.tensor(steps, dtype=torch.float32, device=dev),
                    mse_loss_indexes=torch.tensor(vae_idx, **as_long))
        finally:
            hook.remove()
        if len(captured) != 1 or out.get("mse") is None:
            raise RuntimeError(f"{WHAT}: NeMo's forward did not run the flow head once ({len(captured)} calls)")
        v, target = captured[0], noise - clean
        with torch.no_grad():
            if not torch.allclose(out["mse"].detach(), (v.detach() - target) ** 2, rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{WHAT}: the replayed flow noise does not reproduce NeMo's per-token MSE; NeMo's "
                                   "forward changed how it draws noise, so the adapter cannot expose the target")
        c = v.shape[-1]
        return FlowOutput(v=v.reshape(b, gh * gw, c), target=target.reshape(b, gh * gw, c), grid=(gh, gw))

    def _master_weights(self) -> None:
        """Trained parameters in float32 whatever `dtype` stores the rest: AdamW updates at a 2e-5 learning
        rate vanish in bf16 rounding. Compute still runs in bf16 under autocast."""
        if self.handles_data_parallel:
            return
        with torch.no_grad():
            for q in self.model.parameters():
                if q.requires_grad and q.dtype != torch.float32:
                    q.data = q.data.float()

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The generation expert and flow head (trainable=gen) or everything; float32 from here on."""
        self._master_weights()
        return [q for q in self.model.parameters() if q.requires_grad]

    def state_dict(self) -> Dict[str, Any]:
        """The trained parameters only, as full tensors on the CPU.

        Under FSDP this is a collective: every rank must call it; rank 0 receives the tensors, the other
        ranks an empty dict."""
        if self.handles_data_parallel:
            import torch.distributed as dist
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if dist.get_rank() != 0:
                return {}
        else:
            full = dict(self.model.named_parameters())
        return {k: full[k].detach().to("cpu", copy=True) for k in self._trainable_names}

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        keys, want = set(state), set(self._trainable_names)
        if keys != want:
            raise ValueError(f"{WHAT}: state has {len(keys - want)} unknown and lacks {len(want - keys)} trained "
                             f"parameters (e.g. {sorted(keys - want)[:2]} / {sorted(want - keys)[:2]})")
        if self.handles_data_parallel:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            # a copy: torch replaces the dict's tensors with their shards, and the caller's dict stays whole
            return set_model_state_dict(self.model, dict(state), options=StateDictOptions(full_state_dict=True,
                                                                                          strict=False))
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
        return None
