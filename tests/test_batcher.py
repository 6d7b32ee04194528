"""MicroBatcher: batches what is queued, waits only for images that are announced, bounds its queue."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from inference import MicroBatcher, QueueFull, load_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tiny_bundle_path):
    return load_bundle(tiny_bundle_path, device="cpu", backend="eager")


def image(bundle) -> torch.Tensor:
    side = bundle.preprocess.image_size
    return torch.rand(3, side, side)


def test_a_lone_image_is_not_held_back_for_company(tiny_bundle):
    batcher = MicroBatcher(tiny_bundle, max_batch_size=8, max_wait_ms=60_000)
    try:
        result = batcher.submit(image(tiny_bundle)).result(timeout=30)  # would take 60 s if it waited
        assert result.batch_size == 1
    finally:
        batcher.stop()


def test_announced_images_join_the_batch_being_gathered(tiny_bundle):
    batcher = MicroBatcher(tiny_bundle, max_batch_size=8, max_wait_ms=60_000)
    announced, results = threading.Event(), {}

    def slow_decoder() -> None:
        with batcher.incoming(1) as announcement:
            announced.set()
            time.sleep(0.3)  # "decoding"
            future = batcher.submit_many([image(tiny_bundle)], announcement=announcement)[0]
        results["late"] = future.result(timeout=30)

    try:
        thread = threading.Thread(target=slow_decoder)
        thread.start()
        announced.wait(5)
        results["early"] = batcher.submit(image(tiny_bundle)).result(timeout=30)
        thread.join(30)
        assert results["early"].batch_size == results["late"].batch_size == 2
    finally:
        batcher.stop()


def test_a_withdrawn_announcement_does_not_hold_the_batch(tiny_bundle):
    batcher = MicroBatcher(tiny_bundle, max_batch_size=8, max_wait_ms=60_000)
    try:
        with batcher.incoming(1):
            pass  # e.g. the upload was not an image: nothing will be submitted
        assert batcher.submit(image(tiny_bundle)).result(timeout=30).batch_size == 1
    finally:
        batcher.stop()


def test_queue_bound_and_all_or_nothing_submission(tiny_bundle):
    batcher = MicroBatcher(tiny_bundle, max_batch_size=1, max_wait_ms=0, max_queue=2)
    try:
        # hold the batcher inside a forward so the queue can fill
        gate = threading.Event()
        original = tiny_bundle.engine

        class Blocking:
            name = "blocking"

            def __call__(self, batch):
                gate.wait(30)
                return original(batch)

        tiny_bundle.engine = Blocking()
        first = batcher.submit(image(tiny_bundle))
        deadline = time.time() + 10
        while batcher.queue_depth and time.time() < deadline:  # wait until the batcher took it
            time.sleep(0.01)
        with pytest.raises(QueueFull):
            batcher.submit_many([image(tiny_bundle) for _ in range(3)])
        assert batcher.queue_depth == 0  # none of the three stayed queued
        queued = batcher.submit_many([image(tiny_bundle) for _ in range(2)])
        gate.set()
        assert [f.result(timeout=30).batch_size for f in [first, *queued]] == [1, 1, 1]
    finally:
        tiny_bundle.engine = original
        batcher.stop()
