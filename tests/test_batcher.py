"""The dynamic batcher: batching policy, limits, error fan-out, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import BatcherClosedError, DynamicBatcher, InferenceError, QueueFullError, inline_capacity


class Recorder:
    """A fake model: returns each image's first pixel as its output; records batch sizes; can be gated."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(len(x))
        first = x[:, 0, 0, 0].copy()
        return first, first * 2


def images(*values: float) -> np.ndarray:
    x = np.zeros((len(values), 1, 28, 28), np.float32)
    x[:, 0, 0, 0] = values
    return x


async def test_lone_request_dispatches_at_once_off_the_event_loop() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=8)
    out, doubled = await asyncio.wait_for(batcher.submit(images(3)), timeout=10)  # a hang guard only
    assert model.batches == [1]
    assert out.tolist() == [3] and doubled.tolist() == [6]
    assert model.threads and threading.current_thread().name not in model.threads
    await batcher.close()


async def test_requests_queued_while_busy_form_the_next_batch_in_order() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=64)
    model.gate.clear()  # the first batch blocks, so the rest queue up
    first = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(images(i))) for i in range(1, 11)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    assert model.batches == [1, 10]
    assert [r[0].tolist() for r in results] == [[i] for i in range(11)]  # each caller gets its own rows
    await batcher.close()


async def test_flush_on_size_and_multi_image_requests_count_all_their_images() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=4)
    model.gate.clear()
    blocker = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(batcher.submit(images(1, 2, 3))), asyncio.create_task(batcher.submit(images(4))),
             asyncio.create_task(batcher.submit(images(5, 6)))]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(blocker, *tasks)
    assert model.batches == [1, 4, 2]  # 3+1 fill a batch of 4; the 2-image request goes next
    assert results[1][0].tolist() == [1, 2, 3] and results[3][0].tolist() == [5, 6]
    await batcher.close()


async def test_positive_delay_waits_to_fill_a_batch() -> None:
    model = Recorder()
    # A delay of ten minutes: had the batch waited for the timer, wait_for would fail long before.
    batcher = DynamicBatcher(model, max_batch_size=4, max_delay_ms=600_000)
    tasks = [asyncio.create_task(batcher.submit(images(i))) for i in range(3)]
    await asyncio.sleep(0.02)
    assert model.batches == []  # waiting to fill
    tasks.append(asyncio.create_task(batcher.submit(images(3))))  # fills the batch
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert model.batches == [4]  # flushed on size, not on the timer


async def test_positive_delay_flushes_a_partial_batch_when_due() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=64, max_delay_ms=60)
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(images(i)) for i in range(3))), timeout=30)
    assert model.batches == [3]  # one partial batch once the delay was up (how long: bench/bench_batcher.py)
    await batcher.close()


async def test_an_error_fails_every_request_of_the_batch_and_the_batcher_goes_on() -> None:
    calls = 0

    def flaky(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("boom")
        time.sleep(0.05)
        return x[:, 0, 0, 0], x[:, 0, 0, 0]

    batcher = DynamicBatcher(flaky, max_batch_size=16)
    first = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.01)
    doomed = [asyncio.create_task(batcher.submit(images(i))) for i in range(5)]
    assert (await first)[0].tolist() == [0]
    results = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), 2)
    assert all(isinstance(r, InferenceError) and "boom" in str(r) for r in results)
    assert (await batcher.submit(images(9)))[0].tolist() == [9]  # still serving
    await batcher.close()


async def test_wrong_result_count_is_an_error_not_a_mixup() -> None:
    batcher = DynamicBatcher(lambda x: (x[:1, 0, 0, 0],), max_batch_size=8)
    with pytest.raises(InferenceError, match="returned 1 rows for a batch of 2"):
        await batcher.submit(images(1, 2))
    await batcher.close()


async def test_cancelled_callers_are_skipped() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=64)
    model.gate.clear()
    blocker = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.submit(images(1, 1, 1)))
    kept = asyncio.create_task(batcher.submit(images(2)))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    model.gate.set()
    await blocker
    assert (await kept)[0].tolist() == [2]
    assert model.batches == [1, 1]  # the cancelled request's 3 images never ran
    assert batcher.pending == 0
    await batcher.close()


async def test_queue_full_is_refused_at_once_with_a_retry_hint() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue=5)
    model.gate.clear()
    blocker = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit(images(1, 2))), asyncio.create_task(batcher.submit(images(3, 4, 5)))]
    await asyncio.sleep(0.01)
    assert batcher.pending == 5
    with pytest.raises(QueueFullError, match="5 images already queued") as info:
        await batcher.submit(images(6))
    assert info.value.retry_after_s >= 1
    model.gate.set()
    await asyncio.gather(blocker, *queued)
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    model = Recorder(delay_s=0.02)
    batcher = DynamicBatcher(model, max_batch_size=2)
    tasks = [asyncio.create_task(batcher.submit(images(i))) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close()
    assert [t.result()[0].tolist() for t in tasks] == [[i] for i in range(6)]
    with pytest.raises(BatcherClosedError):
        await batcher.submit(images(1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_delay_ms": -1}, "max_delay_ms"),
        ({"max_queue": 0}, "max_queue"),
        ({"inline": "sometimes"}, "inline"),
    ],
)
def test_bad_knobs_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DynamicBatcher(Recorder(), **kwargs)


async def test_batch_size_one_turns_batching_off() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=1)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(images(i))) for i in range(4)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert model.batches == [1, 1, 1, 1]
    await batcher.close()


# --- inline inference: a lone request on the event loop when the model costs less than the hand-off -----------


def _shipped_lenet(models_dir):
    from service.runtime import load_model

    return load_model(models_dir / "lenet5.onnx", warmup_batch_sizes=(1,))


async def test_inline_and_thread_paths_give_identical_outputs_on_the_real_model(models_dir, mnist_test_sample) -> None:
    model = _shipped_lenet(models_dir)
    x = mnist_test_sample[0][:5].reshape(-1, 1, 28, 28).astype(np.float32)
    ran_on: list[str] = []

    def infer(batch: np.ndarray):
        ran_on.append(threading.current_thread().name)
        return model.run(batch)

    inline = DynamicBatcher(infer, inline="on", name="inline")
    await inline.calibrate(x[:1])
    threaded = DynamicBatcher(infer, inline="off", name="threaded")
    await threaded.calibrate(x[:1])
    assert inline.inline_max_images >= 1 and threaded.inline_max_images == 0
    ran_on.clear()
    for i in range(len(x)):
        a = await inline.submit(x[i : i + 1])
        assert ran_on[-1] == threading.current_thread().name  # ran on the event loop's thread
        b = await threaded.submit(x[i : i + 1])
        assert ran_on[-1] != threading.current_thread().name  # ran in the inference thread
        for out_a, out_b in zip(a, b, strict=True):
            np.testing.assert_array_equal(out_a, out_b)
    assert [int(p.argmax()) for p in (await inline.submit(x[:1]))[1]] == [int(mnist_test_sample[1][0])]
    await inline.close()
    await threaded.close()


def test_auto_runs_inline_what_costs_less_than_one_hand_off_and_nothing_slow() -> None:
    # A 20 us model and a 70 us hand-off (LeNet-5 on a CPU): three images fit in one hand-off.
    assert inline_capacity("auto", 20e-6, 70e-6, 64) == 3
    assert inline_capacity("auto", 100e-6, 70e-6, 64) == 0  # the model costs more than the hop
    assert inline_capacity("on", 20e-6, 70e-6, 64) == 50  # whatever fits in 1 ms
    assert inline_capacity("on", 2e-6, 70e-6, 64) == 64  # never past the batch size
    assert inline_capacity("on", 0.005, 70e-6, 64) == 0  # a slow model never runs on the loop
    assert inline_capacity("off", 1e-6, 70e-6, 64) == 0


async def test_a_lone_request_the_policy_allows_runs_on_the_event_loop() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, inline="on")
    await batcher.calibrate(images(0))
    batcher.inline_max_images = 1  # as calibrate decides for a model cheaper than the hand-off
    model.threads.clear()
    out, _ = await batcher.submit(images(7))
    assert out.tolist() == [7] and model.threads == {threading.current_thread().name}
    await batcher.close()


async def test_a_slow_model_never_runs_on_the_event_loop_whatever_the_policy() -> None:
    model = Recorder(delay_s=0.005)  # 5 ms a call: over the inline ceiling
    batcher = DynamicBatcher(model, inline="on")
    await batcher.calibrate(images(0), rounds=3)
    assert batcher.inline_max_images == 0
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    model.threads.clear()
    results = await asyncio.gather(*(batcher.submit(images(i)) for i in range(4)))
    task.cancel()
    assert [int(r[0][0]) for r in results] == [0, 1, 2, 3]
    assert threading.current_thread().name not in model.threads
    assert ticks >= 2  # the loop kept running while the model worked
    await batcher.close()


async def test_under_load_requests_are_batched_in_the_thread_not_run_inline() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, inline="on", max_batch_size=64)
    await batcher.calibrate(images(0))
    assert batcher.inline_max_images >= 1
    batcher.inline_max_images = 2  # as for a model costing half a hand-off
    model.threads.clear()
    model.batches.clear()
    # Forty requests ready in the same turn of the loop: the batcher's task sees them all as one batch.
    results = await asyncio.gather(*(batcher.submit(images(i)) for i in range(40)))
    assert [int(r[0][0]) for r in results] == list(range(40))
    assert model.batches == [40]
    assert threading.current_thread().name not in model.threads  # too big to run inline: the thread ran it
    await batcher.close()


async def test_an_inline_failure_is_the_same_inference_error_as_in_the_thread() -> None:
    def broken(x: np.ndarray):
        raise RuntimeError("boom")

    batcher = DynamicBatcher(Recorder(), inline="on")
    await batcher.calibrate(images(0))
    batcher.infer = broken
    with pytest.raises(InferenceError, match="boom"):
        await batcher.submit(images(1))
    await batcher.close()


async def test_a_request_past_its_deadline_times_out_and_a_queued_one_never_runs() -> None:
    model = Recorder()
    model.gate.clear()  # the first batch holds the model
    batcher = DynamicBatcher(model, max_batch_size=4)
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(batcher.submit(images(1), deadline=loop.time() + 0.1))
    await asyncio.sleep(0.02)
    queued = asyncio.create_task(batcher.submit(images(2), deadline=loop.time() + 0.05))
    patient = asyncio.create_task(batcher.submit(images(3), deadline=loop.time() + 30))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queued, 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(running, 5)  # still inside the model when its deadline passed
    model.gate.set()
    assert (await asyncio.wait_for(patient, 5))[0].tolist() == [3]
    assert model.batches == [1, 1]  # the expired queued request was never run
    await batcher.close()
