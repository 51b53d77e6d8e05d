"""The `bagel` model adapter and judge backend: BAGEL (ByteDance-Seed's unified model, e.g. BAGEL-7B-MoT)
through NVIDIA NeMo AutoModel's implementation (`nemo_automodel.components.models.bagel`).

How Bagel's code is obtained: it is not on PyPI and the official modelling code imports flash-attention
unconditionally, so this adapter uses NeMo AutoModel's maintained port, installed pinned and without its
dependency tree (which would replace this project's transformers):

    pip install --no-deps nemo-automodel==0.7.0 einops

Nothing of Bagel or NeMo is copied here: the model, its packed-sequence attention, the KV cache, the
VAE, the state-dict filtering and the packing helpers (attention masks, latent position ids, patchify)
are imported from NeMo. This module only *drives* them:

* `training_forward` builds Bagel's text-to-image training pack (per sample: `<|im_start|> prompt
  <|im_end|>` as a causal split, then `<|vision_start|> latent tokens <|vision_end|>` as a noise split),
  runs NeMo's unmodified `BagelForUnifiedMultimodal.forward` on its dense-mask path, and exposes the
  per-token velocity (captured at `llm2vae`), its target and the latent grid as a FlowOutput. NeMo draws
  the flow noise inside its forward; the adapter seeds that draw from the caller's generator, replays it
  to form the target, and checks the result against the per-token MSE NeMo returns, so a change in
  NeMo's forward fails loudly instead of training on a wrong target.
* `generate` (think and no-think) and `understand` drive NeMo's KV-cache inference (`forward_inference`
  in und / gen mode, `NaiveCache`) with a packed batch, classifier-free guidance on the text, and an Euler
  flow sampler; `BagelJudgeBackend` serves `understand` as the `bagel` judge backend.

Device notes (measured with NeMo AutoModel 0.7.0, torch 2.14): the training path runs on CPU and GPU
(bf16 autocast; on CPU the SDPA kernel restriction to memory-efficient attention, which has no CPU
kernel, is lifted for the duration of the call). NeMo's inference and ViT paths call flash-attention's
varlen kernel (GPU only); `varlen_attention=torch` swaps in an exact but slow PyTorch equivalent for
CPU runs and tests.

Checkpoint directory (local, file:// or s3://; never a hub): the released layout (`llm_config.json`,
`vit_config.json`, `ema.safetensors`, `ae.safetensors`, Qwen2 tokenizer files) or a BagelConfig
`config.json` with `ema.safetensors` or sharded `*.safetensors` + index; `ae_config.json` optionally
overrides the VAE architecture (random test models).

Parameters: model_path (or model.checkpoint), device, dtype (auto: bf16 on GPU, fp32 master weights on
CPU), trainable (gen: the generation expert and flow head, the paper's recipe | all), text_dropout
(probability a training sample drops its prompt, default 0.1 as in Bagel's training), varlen_attention
(flash_attn | torch | auto), timestep_shift (sampling, default 3.0), cfg_interval ("0.4,1.0"),
cfg_renorm (global | none), cfg_renorm_min (0.0), default_resolution (1024), max_think_tokens (512),
vit_max_image_size, vit_min_image_size, activation_checkpointing (false), fsdp (off | full | hybrid),
fsdp_replicas (hybrid: number of replica groups, default = number of nodes).

Package map: nemo.py (NeMo imports, fixed texts), attention.py (kernels and CPU patches), model.py
(BagelModel: parameters and construction), loading.py (config, weights, VAE), parallel.py (trainable expert,
activation checkpointing, FSDP; the `training_params` hook), training.py (training pack and forward, state),
inference.py (KV-cache contexts, sampler, understanding), judge.py (the judge backend), testing.py (random
test models).
"""
