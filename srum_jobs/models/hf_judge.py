"""The `hf` judge backend: any transformers image-text-to-text model from a local directory.

Qwen2.5-VL is the paper's evaluator; any model that `AutoModelForImageTextToText` and `AutoProcessor`
load (Qwen2/2.5/3-VL, LLaVA-style, Idefics, Gemma 3...) works through its own chat template. Requests are
batched (`max_batch_size` per forward, left padding), decoding is greedy unless a request asks for a
temperature, and the `<think>...</think>` part of an output is returned separately from the answer.

Parameters (strings, as in a Triton config.pbtxt or `judge.backend_params`):
  model_path         local directory, file:// or s3:// prefix with the model, processor and tokenizer (required)
  device             auto | cpu | cuda | cuda:N                                  (default auto)
  dtype              auto | bfloat16 | float16 | float32 (auto: bf16 on GPU, fp32 on CPU)
  max_batch_size     requests per generate call                                  (default 8)
  system_prompt      optional system message before every request
  think_mode         prompt: ask for <think>...</think> in the system message (default);
                     template: pass enable_thinking to a chat template that supports it (Qwen3-style)
  think_prompt       the instruction used by think_mode=prompt
  top_p              nucleus sampling when a request sets temperature > 0       (default 1.0)
  attn_implementation  sdpa | eager | flash_attention_2 (default: transformers' choice)
  trust_remote_code  false (default) | true: only for models whose code you have reviewed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..judging.protocols import JudgeParams, JudgeReply
from .common import ParamError, Params, local_weights, resolve_device, resolve_dtype, split_think

WHAT = "hf judge backend"

DEFAULT_THINK_PROMPT = ("Before answering, reason step by step inside <think> and </think> tags; "
                        "then give the final answer in the requested format after the closing tag.")


def _to_pil(image: Any, index: int) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    try:
        import numpy as np

        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
            return Image.fromarray(arr[..., :3])
    except Exception:
        pass
    raise ParamError(f"{WHAT}: image {index} is a {type(image).__name__}; send a PIL image or an HxWx3 uint8 array")


class HFJudgeBackend:
    """JudgeBackend (srum_jobs.judging.protocols) over a transformers vision-language model."""

    def __init__(self, params: Mapping[str, Any]):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        p = Params(params, WHAT)
        self.model_path: Path = local_weights(p.str("model_path", required=True), WHAT)
        self.device = resolve_device(p.str("device"), WHAT)
        self.dtype = resolve_dtype(p.str("dtype"), self.device, WHAT)
        self.max_batch_size = p.int("max_batch_size", 8, min=1)
        self.system_prompt = p.str("system_prompt")
        self.think_mode = p.choice("think_mode", ("prompt", "template"), "prompt")
        self.think_prompt = p.str("think_prompt", DEFAULT_THINK_PROMPT)
        self.top_p = p.float("top_p", 1.0, min=0.0, max=1.0)
        attn = p.choice("attn_implementation", ("sdpa", "eager", "flash_attention_2"))
        trust = p.bool("trust_remote_code", False)
        p.check_unused()

        kwargs: Dict[str, Any] = dict(local_files_only=True, trust_remote_code=trust)
        try:
            self.processor = AutoProcessor.from_pretrained(str(self.model_path), **kwargs)
        except ImportError as e:
            # Video-capable processors (Qwen2-VL family) import torchvision for their video half.
            raise ParamError(f"{WHAT}: the processor of {self.model_path} needs a package that is missing ({e})") from e
        except (OSError, ValueError) as e:
            raise ParamError(f"{WHAT}: {self.model_path} holds no loadable processor/tokenizer: {e}") from e
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ParamError(f"{WHAT}: the processor of {self.model_path} has no tokenizer")
        # Decoder-only generation continues from the last position of every row: pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if attn:
            kwargs["attn_implementation"] = attn
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(str(self.model_path), dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise ParamError(f"{WHAT}: {self.model_path} holds no image-text-to-text model: {e}") from e
        self.model.to(self.device).eval()
        if getattr(self.processor, "chat_template", None) is None and getattr(self.tokenizer, "chat_template", None) is None:
            raise ParamError(f"{WHAT}: {self.model_path} has no chat template; add chat_template.jinja to the directory")
        # Special tokens are dropped from the decoded text, except think tags some tokenizers mark as special.
        self._drop_ids = {i for i, t in zip(self.tokenizer.all_special_ids, self.tokenizer.all_special_tokens)
                          if "think" not in t.lower()}
        self._torch = torch

    # ---------------------------------------------------------------------------------------------
    def render(self, instruction: str, think: bool) -> str:
        """The prompt text of one request: the chat template over (system?, user: image + instruction)."""
        system = [s for s in (self.system_prompt, self.think_prompt if think and self.think_mode == "prompt" else None) if s]
        messages: List[Dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": "\n\n".join(system)}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]})
        extra = {"enable_thinking": bool(think)} if self.think_mode == "template" else {}
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in self._drop_ids], skip_special_tokens=False)

    def generate(self, images: Sequence[Any], instructions: Sequence[str], params: JudgeParams) -> List[JudgeReply]:
        if len(images) != len(instructions):
            raise ParamError(f"{WHAT}: {len(images)} images but {len(instructions)} instructions")
        pil = [_to_pil(im, i) for i, im in enumerate(images)]
        replies: List[JudgeReply] = []
        for start in range(0, len(pil), self.max_batch_size):
            replies.extend(self._generate_chunk(pil[start:start + self.max_batch_size],
                                                list(instructions[start:start + self.max_batch_size]), params))
        return replies

    def _generate_chunk(self, images: List[Any], instructions: List[str], params: JudgeParams) -> List[JudgeReply]:
        torch = self._torch
        texts = [self.render(instr, params.think) for instr in instructions]
        batch = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
        batch = batch.to(self.device)
        if "pixel_values" in batch and batch["pixel_values"].is_floating_point():
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        sample = params.temperature > 0
        gen: Dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, do_sample=sample,
                                   pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            gen.update(temperature=params.temperature, top_p=self.top_p)
        else:
            # greedy: neutralise sampling defaults a model's generation_config may carry
            gen.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**batch, **gen)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        replies = []
        for row in new:
            answer, think = split_think(self._decode(row))
            replies.append(JudgeReply(text=answer, think_text=think))
        return replies

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# A randomly initialised Qwen2.5-VL, built locally (tests, benchmarks, GPU smoke runs; never a hub)
# ---------------------------------------------------------------------------------------------------
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>", "<think>", "</think>")

# A minimal chat template in Qwen's message format, written for the random model (real model directories
# carry their own chat_template.jinja).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_random_qwen2_5_vl(path: str | Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                           vision_hidden_size: int = 32, vision_depth: int = 2, max_pixels: int = 28 * 28 * 16, init_std: float = 0.2) -> Path:
    """Write a randomly initialised Qwen2.5-VL with a locally trained tokenizer and its processor to `path`.

    The default is tiny (about 0.1 M parameters): images are resized to at most `max_pixels`, so a
    64x64 image becomes 4 visual tokens. `init_std` is larger than transformers' 0.02 so that the output
    of a tiny random model visibly depends on its image and text (at 0.02 it often does not)."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from .common import train_tiny_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Qwen2TokenizerFast(tokenizer_object=train_tiny_tokenizer(QWEN_SPECIAL_TOKENS), eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", unk_token=None,
                             extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:7]))
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    image_proc = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=max_pixels)
    Qwen2_5_VLProcessor(image_processor=image_proc, video_processor=Qwen2VLVideoProcessor(), tokenizer=tok,
                        chat_template=TINY_CHAT_TEMPLATE).save_pretrained(str(path))
    heads = 4
    head_dim = hidden_size // heads
    if head_dim % 4:
        raise ValueError(f"hidden_size {hidden_size} must be a multiple of 16 (mrope splits each head in 3 sections)")
    half = head_dim // 2
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], initializer_range=init_std,
                         rope_scaling={"type": "mrope", "mrope_section": [half // 4, half // 4, half - 2 * (half // 4)]}),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_heads=4, out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, fullatt_block_indexes=[vision_depth - 1], window_size=56,
                           initializer_range=init_std),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(path))
    return path
