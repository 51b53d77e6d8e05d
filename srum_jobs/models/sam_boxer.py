"""The `sam` boxer backend: Segment Anything's automatic mask generator -> region boxes.

Each image gets a grid of `points_per_side`^2 point prompts (from the request's BoxOptions); SAM's masks
are filtered by its predicted IoU and stability score, de-duplicated by box NMS, and every surviving mask
becomes one box: pixel xyxy with an exclusive maximum (the same convention as the `components` boxer),
its mask area in pixels, and SAM's predicted IoU as the confidence. Boxes come largest mask first;
masks smaller than `min_area` (a fraction of the image) are dropped and at most `max_regions` are kept.

Parameters (strings, as in a Triton config.pbtxt):
  model_type              vit_b | vit_l | vit_h | custom                    (default vit_h)
  model_path              the SAM checkpoint (.pth state dict): local path, file:// or s3:// (required)
  device                  auto | cpu | cuda | cuda:N                        (default auto)
  pred_iou_thresh         keep masks whose predicted IoU is at least this   (default 0.88, SAM's own)
  stability_score_thresh  keep masks at least this stable                   (default 0.95)
  stability_score_offset  (default 1.0)
  box_nms_thresh          IoU above which duplicate boxes are suppressed    (default 0.7)
  points_per_batch        point prompts per decoder call                    (default 64)
  crop_n_layers           extra crop layers (0 = whole image only)          (default 0)
  min_mask_region_area    remove holes/islands smaller than this many pixels; > 0 needs opencv (default 0)
  encoder_batch           images per image-encoder forward (default 4): the encoder is most of SAM's cost
  model_type=custom only: encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes,
  prompt_embed_dim, image_size, patch_size, window_size, decoder_mlp_dim, decoder_num_heads, iou_head_hidden_dim
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..judging.protocols import BoxOptions, BoxProposal
from .common import ParamError, Params, local_weights, resolve_device

WHAT = "sam boxer backend"


@dataclass(frozen=True)
class SamDims:
    """The architecture of a SAM model (the three released sizes, or any custom one)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple
    prompt_embed_dim: int = 256
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


# The released SAM sizes (segment_anything/build_sam.py).
RELEASED = {
    "vit_b": SamDims(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamDims(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamDims(1280, 32, 16, (7, 15, 23, 31)),
}
# A tiny size for tests and CPU smoke runs (about 0.2 M parameters, 256-pixel input).
TINY = SamDims(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
               prompt_embed_dim=32, image_size=256, window_size=4, decoder_mlp_dim=64, decoder_num_heads=2,
               iou_head_hidden_dim=32)
_CUSTOM_KEYS = [f for f in SamDims.__dataclass_fields__]


def build_sam(dims: SamDims) -> Any:
    """A SAM module of the given architecture, randomly initialised (segment-anything's own modules)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if dims.image_size % dims.patch_size:
        raise ParamError(f"{WHAT}: image_size {dims.image_size} is not a multiple of patch_size {dims.patch_size}")
    if any(i >= dims.encoder_depth or i < 0 for i in dims.encoder_global_attn_indexes):
        raise ParamError(f"{WHAT}: encoder_global_attn_indexes {list(dims.encoder_global_attn_indexes)} must lie in "
                         f"[0, encoder_depth={dims.encoder_depth})")
    grid = dims.image_size // dims.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=dims.encoder_depth, embed_dim=dims.encoder_embed_dim, img_size=dims.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=dims.encoder_num_heads,
            patch_size=dims.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(dims.encoder_global_attn_indexes), window_size=dims.window_size,
            out_chans=dims.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=dims.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(dims.image_size, dims.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dims.prompt_embed_dim, mlp_dim=dims.decoder_mlp_dim,
                                          num_heads=dims.decoder_num_heads),
            transformer_dim=dims.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=dims.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def save_random_sam(path: str | Path, dims: SamDims = TINY, seed: int = 0) -> Path:
    """Write the state dict of a randomly initialised SAM of `dims` to `path` (a .pth file)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_sam(dims).state_dict(), path)
    return path


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    """Pixel xyxy (exclusive max) of a boolean HxW mask; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


class SamBoxer:
    """BoxerBackend (srum_jobs.judging.protocols) over segment-anything's SamAutomaticMaskGenerator."""

    def __init__(self, params: Mapping[str, Any]):
        import torch

        p = Params(params, WHAT)
        self.model_type = p.choice("model_type", ("vit_b", "vit_l", "vit_h", "custom"), "vit_h")
        custom = {k: p.int_list(k) if k == "encoder_global_attn_indexes" else p.int(k, min=1) for k in _CUSTOM_KEYS}
        given = {k: v for k, v in custom.items() if v is not None}
        if self.model_type == "custom":
            missing = [k for k in ("encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                                   "encoder_global_attn_indexes") if k not in given]
            if missing:
                raise ParamError(f"{WHAT}: model_type=custom needs parameter(s) {missing}")
            given["encoder_global_attn_indexes"] = tuple(given["encoder_global_attn_indexes"])
            self.dims = SamDims(**given)
        else:
            if given:
                raise ParamError(f"{WHAT}: parameter(s) {sorted(given)} apply only to model_type=custom "
                                 f"(model_type={self.model_type} has fixed dimensions)")
            self.dims = RELEASED[self.model_type]
        self.checkpoint = local_weights(p.str("model_path", required=True), WHAT)
        if not self.checkpoint.is_file():
            raise ParamError(f"{WHAT}: model_path {self.checkpoint} is not a file (a SAM .pth checkpoint)")
        self.device = resolve_device(p.str("device"), WHAT)
        self.thresholds = dict(
            pred_iou_thresh=p.float("pred_iou_thresh", 0.88, min=0.0, max=1.0),
            stability_score_thresh=p.float("stability_score_thresh", 0.95, min=0.0, max=1.0),
            stability_score_offset=p.float("stability_score_offset", 1.0, min=0.0),
            box_nms_thresh=p.float("box_nms_thresh", 0.7, min=0.0, max=1.0),
            points_per_batch=p.int("points_per_batch", 64, min=1),
            crop_n_layers=p.int("crop_n_layers", 0, min=0),
            min_mask_region_area=p.int("min_mask_region_area", 0, min=0),
        )
        self.encoder_batch = p.int("encoder_batch", 4, min=1)
        p.check_unused()
        if self.thresholds["min_mask_region_area"] > 0:
            try:
                import cv2  # noqa: F401  (segment-anything's hole/island removal uses it)
            except ImportError:
                raise ParamError(f"{WHAT}: min_mask_region_area > 0 needs opencv (pip install opencv-python-headless)") from None

        self.model = build_sam(self.dims)
        try:
            # weights_only: a checkpoint is data, never code to run
            state = torch.load(str(self.checkpoint), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ParamError(f"{WHAT}: cannot read checkpoint {self.checkpoint}: {e}") from e
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ParamError(f"{WHAT}: checkpoint {self.checkpoint} does not fit model_type={self.model_type} "
                             f"{asdict(self.dims)}: {str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self._generators: Dict[int, Any] = {}

    def _generator(self, points_per_side: int) -> Any:
        from segment_anything import SamAutomaticMaskGenerator

        gen = self._generators.get(points_per_side)
        if gen is None:
            gen = SamAutomaticMaskGenerator(self.model, points_per_side=points_per_side, output_mode="binary_mask",
                                            **self.thresholds)
            self._generators[points_per_side] = gen
        return gen

    def propose_one(self, image: Any, options: BoxOptions) -> BoxProposal:
        arr = _rgb_uint8(image)
        records = self._generator(options.points_per_side).generate(arr)
        return proposal_from_masks(records, options, arr.shape[:2])

    def embed(self, arrays: Sequence[np.ndarray]) -> Tuple[Any, List[Tuple[int, int]]]:
        """The image encoder over a batch: (features B x C x h x w, each image's resized input size).

        Each image is resized (longest side to the model's input size) and padded exactly as SamPredictor does,
        so its embedding equals what the generator would compute alone (up to float rounding)."""
        import torch

        gen = self._generator(BoxOptions().points_per_side)
        transform = gen.predictor.transform
        inputs, sizes = [], []
        for arr in arrays:
            resized = transform.apply_image(arr)
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            sizes.append(tuple(x.shape[-2:]))
            inputs.append(self.model.preprocess(x))
        with torch.inference_mode():
            features = self.model.image_encoder(torch.cat(inputs, dim=0))
        return features, sizes

    def propose(self, images: Sequence[Any], options: BoxOptions) -> List[BoxProposal]:
        """Boxes for many images: the image encoder (most of SAM's cost) runs on batches of `encoder_batch`
        images; the point-prompt decoding then runs per image on its precomputed embedding. With crops
        (crop_n_layers > 0) every crop needs its own embedding, so images are boxed one at a time."""
        arrays = [_rgb_uint8(im) for im in images]
        if self.thresholds["crop_n_layers"] > 0:
            return [self.propose_one(a, options) for a in arrays]
        gen = self._generator(options.points_per_side)
        predictor = gen.predictor
        out: List[BoxProposal] = []
        for start in range(0, len(arrays), self.encoder_batch):
            chunk = arrays[start:start + self.encoder_batch]
            features, sizes = self.embed(chunk)
            for i, arr in enumerate(chunk):
                def use_embedding(image: Any, image_format: str = "RGB", _i: int = i, _arr: np.ndarray = arr) -> None:
                    predictor.reset_image()
                    predictor.original_size = _arr.shape[:2]
                    predictor.input_size = sizes[_i]
                    predictor.features = features[_i:_i + 1]
                    predictor.is_image_set = True

                # the generator calls set_image(crop) for its one full-image crop: hand it the batch's embedding
                predictor.set_image = use_embedding
                try:
                    records = gen.generate(arr)
                finally:
                    del predictor.set_image           # back to the class's own method
                out.append(proposal_from_masks(records, options, arr.shape[:2]))
        return out

    def close(self) -> None:
        self._generators.clear()
        self.model = None


def proposal_from_masks(records: Sequence[Mapping[str, Any]], options: BoxOptions, image_hw: Sequence[int]) -> BoxProposal:
    """SAM's mask records (`segmentation` HxW bool, `predicted_iou`) -> boxes, largest mask first.

    The box is computed from the mask itself (exclusive max), not from SAM's inclusive XYWH `bbox`, so it
    matches the `components` boxer's convention exactly."""
    h, w = int(image_hw[0]), int(image_hw[1])
    boxes, areas, conf = [], [], []
    for r in records:
        mask = np.asarray(r["segmentation"], dtype=bool)
        box = mask_box(mask)
        if box is None:
            continue
        area = float(mask.sum())
        if area < options.min_area * h * w:
            continue
        boxes.append(box)
        areas.append(area)
        conf.append(min(1.0, max(0.0, float(r["predicted_iou"]))))
    order = np.argsort(-np.asarray(areas, dtype=np.float64), kind="stable")[: options.max_regions]
    return BoxProposal(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order],
                       areas=np.asarray(areas, dtype=np.float32)[order],
                       confidence=np.asarray(conf, dtype=np.float32)[order])


def _rgb_uint8(image: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode != "RGB" else image
        return np.asarray(image)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ParamError(f"{WHAT}: an image must be a PIL image or an HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    return arr
