"""training/allocator.py: after keep_freed_memory(), glibc serves big blocks from the heap and keeps them
when they are freed (checked in a fresh process through glibc's own mallinfo2 counters)."""

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import ctypes, sys
    from training.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "keep":
        assert keep_freed_memory() is True
        assert keep_freed_memory() is True   # idempotent
    size = 16 << 20                           # a 16 MiB activation buffer
    before = libc.mallinfo2()
    p = libc.malloc(size)
    during = libc.mallinfo2()
    libc.free(p)
    after = libc.mallinfo2()
    print(during.hblkhd - before.hblkhd, after.fordblks)
""")


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    mmapped, free_in_heap = map(int, out.split())
    return mmapped, free_in_heap


def test_big_blocks_stay_in_the_process():
    mmapped, free_in_heap = _probe("keep")
    assert mmapped == 0  # served from the heap, not by a fresh mmap
    assert free_in_heap >= 16 << 20  # and kept after free (not trimmed back to the kernel)


def test_default_glibc_maps_and_unmaps_big_blocks():
    """The control: without the call the same block is an mmap of its own, so the probe can tell."""
    mmapped, free_in_heap = _probe("default")
    assert mmapped >= 16 << 20
    assert free_in_heap < 16 << 20
