"""NeMo AutoModel's Bagel modules, imported on first use, and the adapter's fixed texts."""

from __future__ import annotations

from typing import Any

from ..common import ParamError


WHAT = "bagel model adapter"
INSTALL_HINT = "pip install --no-deps nemo-automodel==0.7.0 einops"

# Written for this project (not Bagel's wording): asks the model to plan inside think tags first.
THINK_SYSTEM_PROMPT = ("Think before you answer: write your reasoning between <think> and </think>, "
                       "then give the final answer after the closing tag.")
THINK_GEN_SYSTEM_PROMPT = ("Before drawing, plan the picture: describe the objects, their attributes, counts "
                           "and layout between <think> and </think>; the image follows the closing tag.")


def _nemo() -> Any:
    """NeMo AutoModel's Bagel modules, imported on first use with an install hint when missing."""
    import importlib

    from PIL import ImageFile

    base = "nemo_automodel.components."
    # NeMo's dataset modules set PIL's process-wide LOAD_TRUNCATED_IMAGES on import, which would make every
    # image decoder of this process accept truncated files: keep the setting we had.
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # full module paths: NeMo's lazy `components.models` package hides the real import error otherwise
        mods = [importlib.import_module(base + m) for m in (
            "models.bagel", "models.bagel.modeling_qwen2_packed", "models.bagel.modeling_siglip_navit",
            "models.bagel.state_dict_adapter", "datasets.multimodal.utils")]
    except ModuleNotFoundError as e:
        raise ParamError(f"{WHAT}: NeMo AutoModel's Bagel cannot be imported ({e}); {INSTALL_HINT}") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    bagel_pkg, qwen, siglip, sd_adapter, data_utils = mods

    class N:
        pass

    n = N()
    n.bagel, n.qwen, n.siglip, n.sd, n.data = bagel_pkg, qwen, siglip, sd_adapter, data_utils
    return n
