"""PNG encoding: how every image travels to storage and to the judge."""

from __future__ import annotations

import io
from typing import Any


def png_bytes(image: Any) -> bytes:
    """A PIL image encoded as PNG: how every image travels to storage and to the judge."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
