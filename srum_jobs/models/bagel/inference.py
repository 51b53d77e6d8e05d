"""Bagel's KV-cache inference: packed contexts, text and image appending, the Euler flow sampler with
classifier-free guidance (generate, predicted_x0) and understanding."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..base import GeneratedImage
from ..common import ParamError, check_generate_request, split_think
from .attention import _NavitOutput, _navit_output_broken, _patched
from .nemo import THINK_GEN_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT, WHAT


# --------------------------------------------------------------------------------------------- state
@dataclass
class _Context:
    """Per-sample KV-cache bookkeeping of a packed batch: cached length and next rope position."""

    cache: Any
    kv_lens: List[int]
    ropes: List[int]

    @staticmethod
    def merge(parts: Sequence["_Context"], cache: Any) -> "_Context":
        """One packed context from single-sample ones (`cache` an empty NaiveCache to fill), sample order kept."""
        for layer in range(len(cache.key_cache)):
            cache.key_cache[layer] = torch.cat([c.cache.key_cache[layer] for c in parts])
            cache.value_cache[layer] = torch.cat([c.cache.value_cache[layer] for c in parts])
        return _Context(cache, [k for c in parts for k in c.kv_lens], [r for c in parts for r in c.ropes])

    def index_layout(self, q_lens: Sequence[int], device: Any) -> Dict[str, torch.Tensor]:
        """Where new query tokens and old cache entries go in the merged (per sample: cache, then query) layout."""
        q_idx, kv_idx, start = [], [], 0
        for kv, q in zip(self.kv_lens, q_lens):
            kv_idx.extend(range(start, start + kv))
            q_idx.extend(range(start + kv, start + kv + q))
            start += kv + q
        return dict(query_lens=torch.tensor(list(q_lens), dtype=torch.int32, device=device),
                    key_values_lens=torch.tensor(self.kv_lens, dtype=torch.int32, device=device),
                    packed_query_indexes=torch.tensor(q_idx, dtype=torch.long, device=device),
                    packed_key_value_indexes=torch.tensor(kv_idx, dtype=torch.long, device=device))


class Inference:
    """BagelModel's inference half (mixin)."""

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        # NeMo's layers dispatch on `training`: eval mode selects forward_inference.
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._kernels(), self._autocast(), contextlib.ExitStack() as stack:
                if _navit_output_broken(self.n.qwen):
                    stack.enter_context(_patched(self.n.qwen, "BaseNavitOutputWithPast", _NavitOutput))
                yield
        finally:
            self.model.train(was)

    def _new_context(self, batch: int) -> _Context:
        lm = self.model.model.language_model
        return _Context(self.n.qwen.NaiveCache(lm.config.num_hidden_layers), [0] * batch, [0] * batch)

    def _lm_inference(self, ctx: _Context, embeds: torch.Tensor, q_lens: Sequence[int], positions: List[int], *,
                      causal: bool, update: bool, mode: str = "und", **extra: Any) -> torch.Tensor:
        lm = self.model.model.language_model
        layout = ctx.index_layout(q_lens, self.device)
        out = lm.forward_inference(packed_query_sequence=embeds, packed_query_position_ids=torch.tensor(
            positions, dtype=torch.long, device=self.device), past_key_values=ctx.cache, update_past_key_values=update,
            is_causal=causal, mode=mode, **layout, **extra)
        if update:
            ctx.cache = out.past_key_values
        return out.packed_query_sequence

    def _append_text(self, ctx: _Context, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill one text split per sample (causal). Returns the hidden state of each sample's last token."""
        lm = self.model.model.language_model
        ids = torch.tensor([t for ts in token_lists for t in ts], dtype=torch.long, device=self.device)
        positions = [r + j for r, ts in zip(ctx.ropes, token_lists) for j in range(len(ts))]
        hidden = self._lm_inference(ctx, lm.model.embed_tokens(ids), [len(ts) for ts in token_lists], positions,
                                    causal=True, update=True)
        ends = torch.tensor([len(ts) for ts in token_lists], device=self.device).cumsum(0) - 1
        for i, ts in enumerate(token_lists):
            ctx.kv_lens[i] += len(ts)
            ctx.ropes[i] += len(ts)
        return hidden[ends]

    def _append_images(self, ctx: _Context, images: Sequence[Any]) -> None:
        """Prefill one ViT image split per sample: <|vision_start|> patches <|vision_end|>, full attention,
        one rope position for the whole image (Bagel's understanding input)."""
        n, mdl = self.n, self.model.model
        patches, pos_ids, lens = [], [], []
        for img in images:
            x = self.vit_transform(_pil(img))
            patches.append(n.data.patchify(x, self.config.vit_patch_size))
            pos_ids.append(self._vit_pos(x.shape[1], x.shape[2]))
            lens.append(patches[-1].shape[0])
        seqlens = torch.tensor(lens, dtype=torch.int32, device=self.device)
        flat_pos = torch.cat(pos_ids).to(self.device)
        emb = mdl.vit_model(packed_pixel_values=torch.cat(patches).to(self.device), packed_flattened_position_ids=flat_pos,
                            cu_seqlens=torch.nn.functional.pad(seqlens.cumsum(0), (1, 0)).to(torch.int32),
                            max_seqlen=int(max(lens)))
        emb = mdl.connector(emb) + mdl.vit_pos_embed(flat_pos)
        lm = self.model.model.language_model
        marks = lm.model.embed_tokens(torch.tensor([self.ids["start_of_image"], self.ids["end_of_image"]],
                                                   device=self.device))
        rows, start, positions = [], 0, []
        for i, L in enumerate(lens):
            rows += [marks[:1], emb[start:start + L].to(marks.dtype), marks[1:]]
            start += L
            positions += [ctx.ropes[i]] * (L + 2)
        self._lm_inference(ctx, torch.cat(rows), [L + 2 for L in lens], positions, causal=False, update=True)
        for i, L in enumerate(lens):
            ctx.kv_lens[i] += L + 2
            ctx.ropes[i] += 1

    def _vit_pos(self, h: int, w: int) -> torch.Tensor:
        get = (self.n.data.get_flattened_position_ids_interpolate if self.config.interpolate_pos
               else self.n.data.get_flattened_position_ids_extrapolate)
        return get(h, w, self.config.vit_patch_size, max_num_patches_per_side=self.config.vit_max_num_patch_per_side)

    def _generate_text(self, ctx: _Context, max_new_tokens: int, temperature: float,
                       generator: Optional[torch.Generator]) -> List[str]:
        """Decode a reply per sample, starting from <|im_start|> and stopping at <|im_end|>; every token
        goes into the cache, so the reply becomes context for what follows (think, then draw)."""
        lm = self.model.model.language_model
        eos = self.ids["eos_token_id"]
        b = len(ctx.kv_lens)
        current = [self.ids["bos_token_id"]] * b
        out: List[List[int]] = [[] for _ in range(b)]
        done = [False] * b
        for _ in range(max_new_tokens):
            hidden = self._append_text(ctx, [[c] for c in current])
            logits = lm.lm_head(hidden).float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
            else:
                nxt = logits.argmax(-1).tolist()
            for i in range(b):
                if not done[i]:
                    if nxt[i] == eos:
                        done[i] = True
                    else:
                        out[i].append(nxt[i])
            if all(done):
                break
            current = [eos if done[i] else nxt[i] for i in range(b)]
        if not all(done):   # close the reply in the cache, as a finished one would be
            self._append_text(ctx, [[eos] for _ in range(b)])
        return [self.tokenizer.decode(o, skip_special_tokens=False) for o in out]

    def _velocity(self, ctx: _Context, x: torch.Tensor, t: float, gh: int, gw: int) -> torch.Tensor:
        """One flow prediction for every sample's latent tokens x (B N, p p C) at time t, attending to the
        sample's cached context without changing it."""
        mdl, lm = self.model.model, self.model.model.language_model
        b, nt = len(ctx.kv_lens), gh * gw
        marks = lm.model.embed_tokens(torch.tensor([self.ids["start_of_image"], self.ids["end_of_image"]],
                                                   device=self.device))
        pos = self._pos_ids(gh * self.downsample, gw * self.downsample, self.downsample,
                            max_num_patches_per_side=self.max_latent).to(self.device)
        tt = torch.full((nt,), t, device=self.device)
        lat = mdl.vae2llm(x) + mdl.time_embedder(tt).repeat(b, 1) + mdl.latent_pos_embed(pos).repeat(b, 1)
        rows, text_idx, vae_idx, positions = [], [], [], []
        for i in range(b):
            base = i * (nt + 2)
            rows += [marks[:1], lat[i * nt:(i + 1) * nt].to(marks.dtype), marks[1:]]
            text_idx += [base, base + nt + 1]
            vae_idx += range(base + 1, base + 1 + nt)
            positions += [ctx.ropes[i]] * (nt + 2)
        vae_idx_t = torch.tensor(vae_idx, dtype=torch.long, device=self.device)
        hidden = self._lm_inference(ctx, torch.cat(rows), [nt + 2] * b, positions, causal=False, update=False,
                                    mode="gen", packed_vae_token_indexes=vae_idx_t,
                                    packed_text_indexes=torch.tensor(text_idx, dtype=torch.long, device=self.device))
        return mdl.llm2vae(hidden[vae_idx_t]).float()

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, think: bool = False, steps: int = 20,
                 guidance: float = 2.0, resolution: Optional[int] = None) -> List[GeneratedImage]:
        if not check_generate_request(WHAT, prompts, seeds, steps):
            return []
        res = int(resolution or self.default_resolution)
        gh, gw = self._grid(res, res)
        b, nt, c = len(prompts), gh * gw, self.p * self.p * self.latent_channels
        # One CPU generator per seed: the same (prompt, seed) gives the same image in any batch.
        x = torch.cat([torch.randn(nt, c, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(self.device)
        thoughts: List[Optional[str]] = [None] * b
        with self._inference():
            if think:
                # Each sample thinks in its own context (how long it thinks must not depend on the others in
                # the batch); the finished contexts are then packed for the shared denoising loop.
                parts = []
                for i, prompt in enumerate(prompts):
                    one = self._new_context(1)
                    self._append_text(one, [self._text_ids(THINK_GEN_SYSTEM_PROMPT)])
                    self._append_text(one, [self._text_ids(prompt)])
                    text = self._generate_text(one, self.max_think_tokens, 0.0, None)[0]
                    thoughts[i] = split_think(text)[1] or text.strip()
                    parts.append(one)
                cond = _Context.merge(parts, self._new_context(b).cache)
            else:
                cond = self._new_context(b)
                self._append_text(cond, [self._text_ids(p) for p in prompts])
            uncond = self._new_context(b)     # text CFG: the same image tokens with no text at all
            ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
            ts = self.sample_shift * ts / (1 + (self.sample_shift - 1) * ts)
            for i in range(steps):
                t, dt = float(ts[i]), float(ts[i] - ts[i + 1])
                v = self._velocity(cond, x, t, gh, gw)
                if guidance > 1.0 and self.cfg_interval[0] <= t <= self.cfg_interval[1]:
                    v_u = self._velocity(uncond, x, t, gh, gw)
                    v_g = v_u + guidance * (v - v_u)
                    if self.cfg_renorm == "global":
                        # keep each sample's guided velocity no longer than its conditional one
                        vn = v.reshape(b, -1).norm(dim=1)
                        gn = v_g.reshape(b, -1).norm(dim=1).clamp_min(1e-12)
                        scale = (vn / gn).clamp(self.cfg_renorm_min, 1.0)
                        v_g = v_g * scale.repeat_interleave(nt)[:, None]
                    v = v_g
                x = x - v * dt                              # t runs from noise (1) to data (0)
            images = self._decode(x, b, gh, gw)
        return [GeneratedImage(image=img, seed=int(s), think_text=th) for img, s, th in zip(images, seeds, thoughts)]

    def _decode(self, x: torch.Tensor, b: int, gh: int, gw: int) -> List[Any]:
        """Packed latent tokens (B N, p p C) -> images."""
        from PIL import Image

        lat = x.reshape(b, gh, gw, self.p, self.p, self.latent_channels).permute(0, 5, 1, 3, 2, 4)
        pixels = self.vae.decode(lat.reshape(b, self.latent_channels, gh * self.p, gw * self.p).float())
        arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def predicted_x0(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 2.0,
                     at_steps: Sequence[int] = (), resolution: Optional[int] = None,
                     think: bool = False) -> Dict[int, List[Any]]:
        """The image the sampler predicts at sampling steps `at_steps` (1-based; step `steps` is the generated
        image): x0 = x_t - t v, v the step's guided velocity read from consecutive latents of the `generate`
        loop (each step's first velocity call records its latents and time), decoded by the VAE."""
        bad = [k for k in at_steps if not 1 <= int(k) <= steps]
        if bad:
            raise ValueError(f"{WHAT}: sampling steps {bad} are outside 1..{steps}")
        states: List[Tuple[torch.Tensor, float]] = []
        velocity = self._velocity

        def recording(ctx: Any, x: torch.Tensor, t: float, gh: int, gw: int) -> torch.Tensor:
            if not states or states[-1][1] != t:        # the conditional call comes first at each step
                states.append((x.detach().clone(), float(t)))
            return velocity(ctx, x, t, gh, gw)

        self._velocity = recording                       # type: ignore[method-assign]
        try:
            final = self.generate(prompts, seeds, think=think, steps=steps, guidance=guidance, resolution=resolution)
        finally:
            del self._velocity                           # back to the class's method
        res = int(resolution or self.default_resolution)
        gh, gw = self._grid(res, res)
        out: Dict[int, List[Any]] = {}
        with self._inference():
            for k in sorted({int(k) for k in at_steps}):
                if k == steps:
                    out[k] = [g.image for g in final]
                    continue
                (x_k, t_k), (x_n, t_n) = states[k - 1], states[k]
                out[k] = self._decode(x_k - t_k * (x_n - x_k) / (t_n - t_k), len(prompts), gh, gw)
        return out

    def understand(self, images: Sequence[Any], instructions: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, think: bool = False,
                   generator: Optional[torch.Generator] = None) -> List[Tuple[str, str]]:
        if not self.config.visual_und:
            raise ParamError(f"{WHAT}: this checkpoint was built without the understanding ViT (visual_und=False)")
        if len(images) != len(instructions):
            raise ValueError(f"{WHAT}: {len(images)} images but {len(instructions)} instructions")
        if not images:
            return []
        with self._inference():
            ctx = self._new_context(len(images))
            if think:
                self._append_text(ctx, [self._text_ids(THINK_SYSTEM_PROMPT)] * len(images))
            self._append_images(ctx, images)
            self._append_text(ctx, [self._text_ids(s) for s in instructions])
            texts = self._generate_text(ctx, max_new_tokens, temperature, generator)
        return [split_think(s) for s in texts]


def _pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    import numpy as np

    return Image.fromarray(np.asarray(image, dtype=np.uint8)[..., :3])
