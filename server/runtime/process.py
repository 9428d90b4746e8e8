"""Model instances in child processes (`instance_isolation: process`): onnxruntime without the server's GIL.

In the default `thread` isolation each instance's session runs on a thread of the server process. An
onnxruntime call releases the GIL while it computes and takes it back to hand its outputs over, so
every execution contends with the event loop for the GIL; on 2 shared cores that costs more than a
small model's compute (docs/benchmarks.md). Here each instance is a child process
(`python -m server.runtime.process`) with its own interpreter and session:

    parent (event loop)                          child
    batch -> input memfd (np.copyto)  --run-->   session.run on views of the input memfd
    outputs <- output memfd (copy)    <--ok---   outputs -> output memfd (grown as needed)

Messages are small pickled tuples over an AF_UNIX SOCK_SEQPACKET pair (one message per datagram, so
the loop reads one with a single recv from an `add_reader` callback); tensors travel through two
memfds (anonymous shared memory, freed with the last descriptor: nothing to clean up after a crash).
One execution at a time per instance, as with threads: the batcher's worker for instance i awaits it.

The child ignores SIGINT/SIGTERM (a terminal's Ctrl-C reaches the whole process group; the parent
decides when to stop) and exits when the parent closes the socket or dies. A child that dies mid-batch
fails that batch with InternalError and is started again for the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from server.errors import InternalError, RepositoryError
from server.repository import ModelConfig
from server.runtime.base import KSERVE_TO_NUMPY, ORT_TO_KSERVE, RuntimeBase, SessionDescription, warmup_batch

log = logging.getLogger(__name__)

ALIGN = 64  # tensor offsets in the shared regions
MAX_MESSAGE_BYTES = 1 << 20  # control messages only; tensors go through shared memory
START_TIMEOUT_S = 600.0  # a child has this long to load and warm up (large models on a slow disk)


def _child_env() -> dict[str, str]:
    """The server's environment, with this checkout importable (the server may run from a source tree)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Region:
    """A memfd mapped into this process; grows (never shrinks) to fit what is written."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None

    def ensure(self, size: int, grow: bool) -> None:
        """Map at least `size` bytes; `grow` also extends the file (the writer's side)."""
        if size <= self.size:
            return
        if grow:
            os.ftruncate(self.fd, size)
        if self.map is not None:
            self.map.close()
        self.map = mmap.mmap(self.fd, size)
        self.size = size

    def write(self, arrays: list[tuple[str, np.ndarray]]) -> tuple[int, list[tuple[str, str, tuple, int]]]:
        """Lay `arrays` out back to back; returns (bytes used, [(name, dtype, shape, offset)])."""
        layout, off = [], 0
        for name, a in arrays:
            layout.append((name, a.dtype.str, a.shape, off))
            off += _aligned(a.nbytes)
        self.ensure(max(off, ALIGN), grow=True)
        for (_, _, _, o), (_, a) in zip(layout, arrays):
            np.copyto(np.ndarray(a.shape, a.dtype, buffer=self.map, offset=o), a, casting="no")
        return off, layout

    def views(self, size: int, layout) -> dict[str, np.ndarray]:
        self.ensure(size, grow=False)
        return {name: np.ndarray(shape, np.dtype(dt), buffer=self.map, offset=off) for name, dt, shape, off in layout}

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


# --------------------------------------------------------------------------------------------------
# the parent side


class _Instance:
    """One child process; `run` is called from the event loop, one execution at a time."""

    def __init__(self, path: Path, config: ModelConfig, providers: list[str], index: int) -> None:
        self.path, self.config, self.providers, self.index = path, config, providers, index
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._in: _Region | None = None
        self._out: _Region | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Future | None = None
        self._restart: asyncio.Future | None = None
        self._detached = False  # the runtime is closing: a restart that finishes now is closed at once
        self._lock = threading.Lock()

    def start(self):
        """Blocking: spawn the child, wait until its session is loaded and warm; returns (description, warm-up s)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        in_fd = os.memfd_create(f"cnn-{self.config.name}-{self.index}-in")
        out_fd = os.memfd_create(f"cnn-{self.config.name}-{self.index}-out")
        spec = {
            "model": str(self.path),
            "providers": self.providers,
            "name": self.config.name,
            "intra_op_threads": self.config.intra_op_threads,
            "inter_op_threads": self.config.inter_op_threads,
            "warmup_batch_sizes": list(self.config.warmup_batch_sizes),
            "memory": {  # server/runtime/threads.py MemorySettings
                "cpu_arena": self.config.cpu_arena,
                "arena_extend_strategy": self.config.arena_extend_strategy,
                "memory_pattern": self.config.memory_pattern,
            },
        }
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.runtime.process",
                    "--socket-fd",
                    str(child.fileno()),
                    "--input-fd",
                    str(in_fd),
                    "--output-fd",
                    str(out_fd),
                    "--spec",
                    json.dumps(spec),
                ],
                pass_fds=(child.fileno(), in_fd, out_fd),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        except OSError:
            for x in (parent, child):
                x.close()
            os.close(in_fd)
            os.close(out_fd)
            raise
        child.close()
        parent.settimeout(START_TIMEOUT_S)
        try:
            data = parent.recv(MAX_MESSAGE_BYTES)
        except (TimeoutError, OSError) as e:
            data, why = b"", f"{type(e).__name__}: {e}"
        else:
            why = ""
        if not data:
            proc.kill()
            rc = proc.wait()
            parent.close()
            os.close(in_fd)
            os.close(out_fd)
            raise RepositoryError(
                f"{self.path}: instance process {self.index} exited while loading (exit code {rc}{'; ' + why if why else ''})"
            )
        msg = pickle.loads(data)
        if msg[0] != "ready":
            proc.wait()
            parent.close()
            os.close(in_fd)
            os.close(out_fd)
            raise RepositoryError(msg[1])
        parent.settimeout(None)
        with self._lock:
            self.proc, self.sock = proc, parent
            self._in, self._out = _Region(in_fd), _Region(out_fd)
        return msg[1], msg[2]

    async def run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """(outputs, seconds the child's session.run took)."""
        loop = asyncio.get_running_loop()
        if self._restart is not None:  # the child died: wait for (or fail with) its replacement
            await asyncio.shield(self._restart)
        assert self.sock is not None and self._in is not None  # started (or restarted) above
        if self._loop is not loop:
            self._loop = loop
            loop.add_reader(self.sock.fileno(), self._on_readable)
        assert self._pending is None, "one execution at a time per instance"
        size, layout = self._in.write(list(inputs.items()))
        fut = self._pending = loop.create_future()
        try:
            self.sock.send(pickle.dumps(("run", size, layout)))
        except OSError:
            self._pending = None
            self._died()
            raise InternalError(self._death_message()) from None
        try:
            return await fut
        finally:
            self._pending = None

    def _on_readable(self) -> None:
        assert self.sock is not None and self._out is not None  # the reader is removed when they close
        try:
            data = self.sock.recv(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data:
            self._died()
            return
        msg = pickle.loads(data)
        fut = self._pending
        if fut is None or fut.done():
            return
        if msg[0] == "ok":
            _, size, layout, run_s = msg
            fut.set_result(
                ({k: v.copy() for k, v in self._out.views(size, layout).items()}, run_s)
            )  # the region is reused
        else:
            fut.set_exception(InternalError(f"model '{self.config.name}' failed to run: {msg[1]}"))

    def _death_message(self) -> str:
        rc = self.proc.poll() if self.proc is not None else None
        return (
            f"model '{self.config.name}' instance process {self.index} exited"
            f"{'' if rc is None else f' (exit code {rc})'}; it is being restarted"
        )

    def _died(self) -> None:
        """EOF from the child: fail its batch, close this end, start a replacement in a thread."""
        loop = self._loop
        if loop is not None and self.sock is not None:
            loop.remove_reader(self.sock.fileno())
        self._loop = None
        self.join(1.0)
        message = self._death_message()
        log.error("%s", message)
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(InternalError(message))
        self._close_handles()
        if loop is not None and self._restart is None:
            self._restart = loop.run_in_executor(None, self.start)
            self._restart.add_done_callback(self._restarted)

    def _restarted(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            err = fut.exception() if not fut.cancelled() else None
            log.error("model '%s' instance process %d could not be restarted: %s", self.config.name, self.index, err)
            failed = asyncio.get_running_loop().create_future()  # every later batch fails with the reason
            failed.set_exception(
                InternalError(f"model '{self.config.name}' instance process {self.index} could not be restarted: {err}")
            )
            failed.exception()  # retrieved: no "never retrieved" warning if no batch comes
            self._restart = failed
            return
        self._restart = None
        if self._detached:  # unloaded while the replacement was starting: it goes at once
            self._close_handles()
            asyncio.get_running_loop().run_in_executor(None, self.join)
            return
        log.info("model '%s' instance process %d restarted", self.config.name, self.index)

    def _close_handles(self) -> None:
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            for r in (self._in, self._out):
                if r is not None:
                    r.close()
            self._in = self._out = None

    def detach(self) -> None:
        """Stop reading and close this end: the child sees EOF and exits. Call on the loop thread when one runs."""
        self._detached = True
        if self._loop is not None and self.sock is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self._loop = None
        self._close_handles()

    def join(self, timeout_s: float = 5.0) -> None:
        """Blocking: reap the child (killed if it has not exited within `timeout_s`)."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProcessRuntime(RuntimeBase):
    """`instances` child processes, each with one session of the model; batches run through `run_batch`
    on the event loop (no thread of this process touches onnxruntime)."""

    isolation = "process"

    def __init__(self, path: str | Path, config: ModelConfig, version: int) -> None:
        super().__init__(path, config, version)
        self._instances = [_Instance(self.path.resolve(), config, self.providers, i) for i in range(config.instances)]
        started, warm = [], []
        try:
            for inst in self._instances:
                desc, warmup_s = inst.start()
                started.append(inst)
                warm.append(warmup_s)
            self._describe(SessionDescription(*desc))
        except BaseException:
            for inst in started:
                inst.detach()
                inst.join()
            raise
        self.warmup_s = max(warm)  # each child warmed up before it reported ready

    @property
    def pids(self) -> list[int]:
        return [i.proc.pid for i in self._instances if i.proc is not None]

    def run_batch(self, inputs: dict[str, np.ndarray], instance: int = 0, alone: bool = False):
        """The Runtime method: (outputs, seconds the model computed in the child). Never inline: the
        child computes whether or not company waits."""
        return self._instances[instance].run(inputs)

    def close(self) -> None:
        """Blocking: close every child's socket (each exits on EOF) and reap them. Off the event loop."""
        for inst in self._instances:
            inst.detach()
        for inst in self._instances:
            inst.join()

    async def aclose(self) -> None:
        for inst in self._instances:
            inst.detach()  # on the loop: it owns the readers
        await asyncio.get_running_loop().run_in_executor(None, self._join_all)

    def _join_all(self) -> None:
        for inst in self._instances:
            inst.join()


# --------------------------------------------------------------------------------------------------
# the child side


def _child(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    p = argparse.ArgumentParser(prog="python -m server.runtime.process")
    p.add_argument("--socket-fd", type=int, required=True)
    p.add_argument("--input-fd", type=int, required=True)
    p.add_argument("--output-fd", type=int, required=True)
    p.add_argument("--spec", required=True)
    a = p.parse_args(argv)
    spec = json.loads(a.spec)
    sock = socket.socket(fileno=a.socket_fd)
    inp, out = _Region(a.input_fd), _Region(a.output_fd)
    try:
        from server.runtime.threads import MemorySettings, open_sessions

        sess = open_sessions(
            Path(spec["model"]),
            spec["intra_op_threads"],
            spec["inter_op_threads"],
            spec["providers"],
            1,
            MemorySettings(**spec["memory"]),
        )[0]
        d = SessionDescription.of(sess)
        names = [o[0] for o in d.outputs]
        t0 = time.perf_counter()
        if len(d.inputs) == 1 and d.inputs[0][1] in ORT_TO_KSERVE:  # else the parent refuses the model, naming why
            iname, itype, ishape = d.inputs[0]
            dtype = KSERVE_TO_NUMPY[ORT_TO_KSERVE[itype]]
            for b in spec["warmup_batch_sizes"]:
                sess.run(names, {iname: warmup_batch(b, ishape[1:], dtype)})
        warmup_s = time.perf_counter() - t0
    except Exception as e:  # a load failure is the parent's RepositoryError, with the same words
        sock.send(
            pickle.dumps(
                ("error", str(e) if isinstance(e, RepositoryError) else f"{spec['model']}: {type(e).__name__}: {e}")
            )
        )
        return 1
    sock.send(pickle.dumps(("ready", (d.providers, d.metadata_json, d.inputs, d.outputs), warmup_s)))
    while True:
        data = sock.recv(MAX_MESSAGE_BYTES)
        if not data:
            return 0  # the parent closed the socket, or died
        _, size, layout = pickle.loads(data)
        try:
            t = time.perf_counter()
            outputs = sess.run(names, inp.views(size, layout))
            run_s = time.perf_counter() - t
            used, olayout = out.write(list(zip(names, outputs)))
            reply: tuple = ("ok", used, olayout, run_s)
        except Exception as e:  # reported to the batch's requests; the child keeps serving
            reply = ("error", f"{type(e).__name__}: {str(e).strip()[:2000]}")
        sock.send(pickle.dumps(reply))


if __name__ == "__main__":
    sys.exit(_child())
