"""Where and whether Classify decodes its images: decided from the image headers, by pixels and bit depth.

Encoded size says little about decode cost: a 32 KB PNG can declare 4096 x 4096 16-bit pixels (32 MiB
decoded, hundreds of milliseconds of CPU). So every image's header is read first (Pillow reads only
the header on open), and the call is

- refused (RESOURCE_EXHAUSTED), before any pixel is decoded, when one image is above the per-image limit
  or all of them together are above `max_request_pixels`;
- decoded on the event loop when the decoded bytes of the whole call are at most `inline_max_bytes`
  (a batch of small digits: cheaper than a thread hop);
- otherwise decoded in `DecodePool`, a small bounded pool of threads (Pillow and numpy release the GIL
  while they decode and resize), so the event loop never waits on pixels.

High bit depths are converted to 8 bit a band of rows at a time (preprocessing/image.py `_eight_bit`), so
no float64 array of the full image is made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from server.errors import ResourceExhausted

T = TypeVar("T")

_HIGH_DEPTH = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


@dataclass(frozen=True)
class DecodePolicy:
    max_pixels: int = 4096 * 4096  # per image (width * height); the server's max_image_pixels
    max_side: int = 8192  # per image, either side
    max_request_pixels: int = 4 * 4096 * 4096  # all images of one call together; the server's max_request_pixels
    inline_max_bytes: int = 64 * 1024  # decoded bytes per call up to which decoding stays on the event loop (80 digits)


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    mode: str  # Pillow's mode after decoding
    bytes_per_pixel: int  # as stored in the file (a 16-bit RGB PNG: 6), which is what decoding touches

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.bytes_per_pixel


def header_of(img: Image.Image) -> Header:
    """The header facts of an opened (not yet loaded) Pillow image."""
    w, h = img.size
    bands = len(img.getbands())
    per_sample = _HIGH_DEPTH.get(img.mode, 1)
    tile = getattr(img, "tile", None) or []
    if tile:
        raw = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
        rawmode = raw[0] if isinstance(raw, tuple) and raw else raw
        if isinstance(rawmode, str) and "16" in rawmode:  # e.g. PNG "RGB;16B": 16 bits per sample on disk
            per_sample = max(per_sample, 2)
    return Header(w, h, img.mode, max(1, bands) * per_sample)


def peek_encoded(data: bytes) -> Header | None:
    """The header of a PNG/JPEG without decoding a pixel; None if it cannot be read (the decoder then
    words the refusal as it always does)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
                return header_of(img)
    except Exception:  # noqa: BLE001 - not an image, truncated, a bomb header: decode() says which
        return None


def raw_header(height: int, width: int, channels: int) -> Header:
    return Header(width, height, {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "?"), max(1, channels))


def check_image(h: Header, policy: DecodePolicy, field: str) -> None:
    """One image against the per-image limits (RESOURCE_EXHAUSTED names the field and the limit)."""
    if h.width > policy.max_side or h.height > policy.max_side or h.pixels > policy.max_pixels:
        raise ResourceExhausted(
            f"{field}: image is {h.width}x{h.height} pixels; the limit is {policy.max_pixels} pixels "
            f"and {policy.max_side} per side (refused before decoding)"
        )


def plan_images(images: list, policy: DecodePolicy) -> str:
    """`plan` for a call's images (each with `.encoded` bytes or `.raw` = (pixels, height, width, channels)):
    each image against the per-image limits, then the call against the per-call budget."""
    headers = []
    for i, im in enumerate(images):
        encoded, raw = getattr(im, "encoded", None), getattr(im, "raw", None)
        if encoded is not None:
            h = peek_encoded(encoded)
            field = f"images[{i}].encoded"
        elif raw is not None:
            h = raw_header(raw[1], raw[2], raw[3]) if raw[3] in (1, 3, 4) else None
            field = f"images[{i}].raw"
        else:
            h = None
        if h is not None:
            check_image(h, policy, field)
            headers.append(h)
    return plan(headers, policy)


def plan(headers: list[Header], policy: DecodePolicy) -> str:
    """'inline' or 'worker' for a call whose images have these headers; RESOURCE_EXHAUSTED if the call is
    above the per-call pixel budget (checked before any image is decoded)."""
    total = sum(h.pixels for h in headers)
    if total > policy.max_request_pixels:
        raise ResourceExhausted(
            f"images: {len(headers)} images of {total:,} pixels together; the limit is "
            f"{policy.max_request_pixels:,} pixels per call (max_request_pixels; refused before decoding)"
        )
    return "inline" if sum(h.decoded_bytes for h in headers) <= policy.inline_max_bytes else "worker"


class DecodePool:
    """A bounded pool of decode threads shared by every Classify call of one server."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or max(1, min(4, (os.cpu_count() or 1)))
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
