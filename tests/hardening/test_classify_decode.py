"""Finding 2: Classify decode cost is set by pixels and bit depth, not by encoded bytes.

On 0e6d6fb images totalling <= 64 KiB encoded were decoded on the event loop: two 32 KB 16-bit
4096x4096 PNGs per call, from one sequential client, took every other caller's ModelInfer p50 from
milliseconds to hundreds; the 16-bit path built float64 copies of the full image; and a call could
carry 256 limit-size images (minutes of CPU). Now the header decides: big decodes go to a bounded
pool, high bit depths are converted without full-size float arrays, and one call has a pixel budget.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.hardening.conftest import Background, p50, paced_latencies
from tests.reliability.helpers import Stubs, cpb, rss_bytes

SIDE = 4096


def png16(side: int = SIDE) -> bytes:
    """A 16-bit grayscale PNG of side x side: ~32 KB encoded, 32 MiB decoded."""
    a = np.zeros((side, side), np.uint16)
    a[0, 0] = 65535  # all zeros but one: compresses to < 32 KiB
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def png8(side: int = SIDE) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def classify(stubs: Stubs, images: list[bytes], timeout: float = 120):
    return stubs.classify.Classify(
        cpb.ClassifyRequest(model_name="pixels", images=[cpb.Image(encoded=b) for b in images]), timeout=timeout
    )


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_small_files_with_many_16bit_pixels_do_not_stall_other_callers(server):
    bomb = png16()
    assert 2 * len(bomb) < 64 * 1024  # two of them were "small" for 0e6d6fb's inline rule
    with Stubs(server.address) as s:
        assert len(classify(s, [bomb]).results) == 1  # served (and warm)
    before = paced_latencies(server.address, 2.0)

    def attack(bg: Background) -> None:
        with Stubs(server.address) as s:
            while not bg.stop_event.is_set():
                assert len(classify(s, [bomb, bomb]).results) == 2
                bg.count += 1

    bg = Background(attack)
    with bg:
        time.sleep(0.3)
        during = paced_latencies(server.address, 4.0)
    bg.stop()
    assert bg.count >= 1
    assert p50(during) < 5 * p50(before) + 0.05, (p50(before), p50(during), bg.count)


def test_16bit_decode_makes_no_full_size_float64_copy(server):
    """One 4096x4096 16-bit image is 32 MiB decoded; on 0e6d6fb the conversion to 8 bit added float64
    arrays of 128 MiB each (peak growth ~360 MiB). Bounded here at 160 MiB of peak growth."""
    with Stubs(server.address) as s:
        assert len(classify(s, [png8(64)]).results) == 1
        base = peak_rss(server.pid)
        assert len(classify(s, [png16()]).results) == 1
    growth = peak_rss(server.pid) - base
    assert growth < 160 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB for one 16-bit image"


def test_one_call_has_a_pixel_budget(server):
    """Eight limit-size images (each allowed alone) in one call: refused from the headers, before decoding."""
    img = png8()
    with Stubs(server.address) as s:
        assert len(classify(s, [img]).results) == 1  # one is fine
        rss0 = rss_bytes(server.pid)
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as e:
            classify(s, [img] * 8)
        took = time.perf_counter() - t0
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "pixels" in e.value.details() and "per call" in e.value.details(), e.value.details()
    assert took < 2.0, took  # no pixel was decoded (decoding them costs seconds here)
    assert rss_bytes(server.pid) - rss0 < 64 * 2**20
