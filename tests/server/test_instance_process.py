"""`instance_isolation: process`: model instances in child processes, tensors through shared memory."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time

import numpy as np
import pytest

from server import repository as repo
from server.core.batcher import DynamicBatcher
from server.errors import InternalError, RepositoryError
from server.runtime.process import ProcessRuntime
from server.runtime.threads import ThreadRuntime
from tests.procs import child_pids
from tests.server.onnx_models import publish, scale_model


def _config(tmp_path, name="m", **kw):
    return dataclasses.replace(repo.load_model_config(tmp_path / name), instance_isolation="process", **kw)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("datatype", ["FP32", "UINT8", "INT64"])
def test_answers_equal_the_in_process_runtime(tmp_path, datatype):
    path = publish(tmp_path, "m", scale_model(datatype, width=6, factor=3.0), max_batch_size=64)
    cfg = _config(tmp_path, instances=2)
    threaded = ThreadRuntime(path, dataclasses.replace(cfg, instance_isolation="thread"), 1)
    proc = ProcessRuntime(path, cfg, 1)
    try:
        assert (proc.provider, proc.inputs, proc.outputs, proc.metadata) == (
            threaded.provider,
            threaded.inputs,
            threaded.outputs,
            threaded.metadata,
        )
        assert len(proc.pids) == 2 and all(_alive(p) for p in proc.pids) and os.getpid() not in proc.pids
        dtype = threaded.input.dtype
        rng = np.random.default_rng(0)

        async def main():
            outs = []
            for rows, instance in ((1, 0), (64, 1), (3, 0), (64, 0), (2, 1)):  # regions grow, then are reused
                x = rng.integers(0, 40, size=(rows, 6)).astype(dtype)
                got, model_s = await proc.run_batch({"input": x}, instance, False)
                assert 0 < model_s < 5
                outs.append((x, got))
            return outs

        for x, got in asyncio.run(main()):
            want = threaded.run({"input": x})
            assert set(got) == {"output"} and got["output"].dtype == want["output"].dtype
            np.testing.assert_array_equal(got["output"], want["output"])
    finally:
        proc.close()
    assert not any(_alive(p) for p in proc.pids)


def test_a_model_error_fails_the_batch_and_the_child_keeps_serving(tmp_path):
    path = publish(tmp_path, "m", scale_model("FP32", width=4))
    proc = ProcessRuntime(path, _config(tmp_path), 1)
    pid = proc.pids[0]
    try:

        async def main():
            with pytest.raises(InternalError, match=r"model 'm' failed to run: .*input"):
                await proc.run_batch({"input": np.zeros((2, 5), np.float32)})  # 5 columns, the model takes 4
            return (await proc.run_batch({"input": np.ones((2, 4), np.float32)}))[0]

        out = asyncio.run(main())
        np.testing.assert_array_equal(out["output"], np.full((2, 4), 2.0, np.float32))
        assert proc.pids == [pid]
    finally:
        proc.close()


def test_a_child_that_dies_mid_batch_fails_that_batch_and_is_restarted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="server.runtime.process")
    path = publish(tmp_path, "m", scale_model("FP32", width=4))
    proc = ProcessRuntime(path, _config(tmp_path), 1)
    first = proc.pids[0]
    try:

        async def main():
            os.kill(first, signal.SIGSTOP)  # the batch below is certainly in flight when the child dies
            task = asyncio.ensure_future(proc.run_batch({"input": np.ones((1, 4), np.float32)}))
            await asyncio.sleep(0.2)
            assert not task.done()
            os.kill(first, signal.SIGKILL)
            with pytest.raises(InternalError, match=r"model 'm' instance process 0 exited \(exit code -9\)"):
                await task
            return (await proc.run_batch({"input": np.full((3, 4), 2.0, np.float32)}))[0]  # waits for the replacement

        out = asyncio.run(main())
        np.testing.assert_array_equal(out["output"], np.full((3, 4), 4.0, np.float32))
        assert proc.pids and proc.pids[0] != first and _alive(proc.pids[0])
        assert "instance process 0 restarted" in caplog.text
    finally:
        proc.close()


def test_the_batcher_runs_a_process_instance_on_the_loop(tmp_path):
    path = publish(tmp_path, "m", scale_model("FP32", width=4))
    proc = ProcessRuntime(path, _config(tmp_path), 1)
    try:

        async def main():
            b = DynamicBatcher(proc, max_batch_size=8, max_queue_delay_s=0.0, max_queue_rows=64, name="m")
            b.start()
            outs = await asyncio.gather(*(b.submit({"input": np.full((1, 4), i, np.float32)}, 1) for i in range(5)))
            await b.close()
            return outs

        for i, out in enumerate(asyncio.run(main())):
            np.testing.assert_array_equal(out["output"], np.full((1, 4), 2.0 * i, np.float32))
    finally:
        proc.close()


def test_load_failures_name_the_file_and_leave_no_child(tmp_path):
    model = scale_model("FP32")
    del model.metadata_props[:]
    path = publish(tmp_path, "m", model)
    before = set(child_pids(os.getpid()))
    with pytest.raises(RepositoryError, match=r"m/1/model.onnx: ONNX metadata lacks"):
        ProcessRuntime(path, _config(tmp_path), 1)
    bad = publish(tmp_path, "n", b"\x00garbage" * 10)
    with pytest.raises(RepositoryError, match=r"n/1/model.onnx"):
        ProcessRuntime(bad, _config(tmp_path, "n"), 1)
    deadline = time.monotonic() + 5
    while set(child_pids(os.getpid())) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (set(child_pids(os.getpid())) - before)


def test_isolation_setting_is_validated(tmp_path):
    publish(tmp_path, "m", scale_model("FP32"))
    (tmp_path / "m" / "config.yaml").write_text("name: m\ninstance_isolation: fork\n")
    with pytest.raises(RepositoryError, match=r"'instance_isolation' must be one of thread, process, got 'fork'"):
        repo.load_model_config(tmp_path / "m")


def test_a_replacement_that_finishes_starting_after_close_is_closed_too(tmp_path):
    path = publish(tmp_path, "m", scale_model("FP32", width=4))
    proc = ProcessRuntime(path, _config(tmp_path), 1)
    first = proc.pids[0]

    async def main():
        await proc.run_batch({"input": np.ones((1, 4), np.float32)})  # the loop now watches the child
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while proc._instances[0]._restart is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the death is noticed and a replacement starts in a thread
        restart = proc._instances[0]._restart
        assert restart is not None
        await proc.aclose()  # closed while the replacement is still starting
        await restart
        await asyncio.sleep(0.5)

    before = set(child_pids(os.getpid()))
    asyncio.run(main())
    deadline = time.monotonic() + 5
    while set(child_pids(os.getpid())) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(child_pids(os.getpid())) - before, "the late replacement was left running"
