"""The COCO evaluation loop with the host work beside the network.

While the network runs on batch k, one thread reads and decodes batch k + 1 and preprocesses
it, and a pool turns the outputs of the batches before k into COCO result entries (masks to
the image as windows, integer boxes, RLE and the json dicts). OpenCV, numpy and pycocotools
release the GIL in their loops, so on a CPU these threads share the cores with MindSpore's
own. The entries come back in image order, and at most ``1 + 2 * threads`` batches are held
at a time, so memory does not grow with the data set. Where the network runs on the CPU the
host work runs between network calls instead (``host_threads``).
"""
import collections
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import mindspore

from src.evaluation.coco_eval import detections_to_coco
from src.inference.detector import detections_to_image


def host_threads(setting):
    """Threads beside the network for ``eval.host_threads`` = ``setting``: itself when >= 0;
    for -1, 0 on a CPU device and otherwise the cores this process may use, at most 4.

    On a CPU the network's parallel loops already take every core, and a host thread that
    takes one of them stalls those loops: a busy host thread slowed the demo network 2.5-4x
    on 2 cores (not 2x), so there the host work runs between network calls.
    """
    if setting >= 0:
        return setting
    if mindspore.get_context("device_target") == "CPU":
        return 0
    return max(1, min(4, len(os.sched_getaffinity(0))))


def batches_of(items, size):
    """Lists of ``size`` consecutive items of an iterable (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _untimed(_stage):
    return contextlib.nullcontext()


class StageTimes:
    """Seconds spent per named stage, summed; ``timer(stage)`` is a context manager that
    adds its duration (thread-safe enough for one thread per stage at a time: a float add)."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def load_batch(batches, detector, timer=None):
    """The next batch of (image_id, BGR image) from the iterator ``batches`` (reading and
    decoding happen there) and the network's input for it, or None after the last batch.

    Returns:
        ([(image_id, height, width)], [batch_size, 3, S, S] float32) or None.
    """
    timer = timer or _untimed
    with timer("decode"):
        batch = next(batches, None)
    if batch is None:
        return None
    with timer("preprocess"):
        array = detector.prepare_batch([image for _, image in batch])
    return [(image_id, image.shape[0], image.shape[1]) for image_id, image in batch], array


def encode_batch(outputs, images, mask_threshold, label_to_category_id, timer=None):
    """COCO result entries of a batch's ``InferenceNet`` outputs (numpy).

    Args:
        images: [(image_id, height, width)] of the batch's images, in slot order.

    Returns:
        [(image_id, bbox_entries, segm_entries)] in slot order (``detections_to_coco``).
    """
    timer = timer or _untimed
    entries = []
    for slot, (image_id, height, width) in enumerate(images):
        detections = detections_to_image(outputs, slot, height, width, mask_threshold, timer)
        with timer("RLE/JSON"):
            entries.append((image_id,) + detections_to_coco(image_id, detections,
                                                            label_to_category_id))
    return entries


def coco_entries_in_order(detector, batches, label_to_category_id, threads):
    """Run ``detector`` over an iterator of batches, the host work beside the network when
    ``threads`` > 0 (``host_threads``).

    Args:
        detector: a ``src.inference.BatchDetector``.
        batches: iterator of lists of up to ``detector.batch_size`` (image_id, BGR image).
        label_to_category_id: 0-based label -> COCO category id.
        threads: 0: each batch is read, run and encoded in turn; n > 0: one thread reads and
            preprocesses the next batch and n threads encode the previous ones.

    Yields:
        (image_id, bbox_entries, segm_entries) per image, in the order of ``batches``.
    """
    threshold = detector.config.eval.mask_threshold
    if threads == 0:
        while (loaded := load_batch(batches, detector)) is not None:
            images, array = loaded
            yield from encode_batch(detector.run_network(array), images, threshold,
                                    label_to_category_id)
        return
    in_flight = collections.deque()
    with ThreadPoolExecutor(1, thread_name_prefix="eval-load") as loader, \
            ThreadPoolExecutor(threads, thread_name_prefix="eval-encode") as encoder:
        next_load = loader.submit(load_batch, batches, detector)
        try:
            while (loaded := next_load.result()) is not None:
                images, array = loaded
                next_load = loader.submit(load_batch, batches, detector)
                outputs = detector.run_network(array)
                in_flight.append(encoder.submit(encode_batch, outputs, images, threshold,
                                                label_to_category_id))
                # Hand back what is done, in order; wait when too many batches are held.
                while in_flight and (in_flight[0].done() or len(in_flight) > 2 * threads):
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()
