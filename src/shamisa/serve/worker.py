"""The model thread and the admission counter in front of it.

One thread owns the model: every encoder pass of the server runs there, off the event loop. Scoring
jobs that wait together are merged into one encoder batch (up to ``batch_size`` images); map jobs run
one at a time (their patches are batched inside :func:`shamisa.inference.maps.quality_maps`).

The admission counter bounds how many requests are inside the server at once (waiting for the model,
decoding or running); a request over the bound is answered 503 with a Retry-After estimate.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class _Job:
    kind: str  # "score" | "map"
    payload: Any
    future: Future
    n_images: int = 1


class ModelWorker:
    """A daemon thread that runs the model's encoder for all requests."""

    def __init__(self, model: Any, *, batch_size: int) -> None:
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._pending: list[_Job] = []
        self._thread = threading.Thread(target=self._run, name="shamisa-model", daemon=True)
        self.seconds_per_image = 0.5  # running estimate for Retry-After
        self.images_done = 0
        self.batches_done = 0
        self._thread.start()

    # -- API for the request handlers (any thread)
    def score(self, crops: list[torch.Tensor]) -> Future:
        """(10, 3, c, c) crops of each image -> a Future of the (N,) raw scores (float64 numpy)."""
        fut: Future = Future()
        self._q.put(_Job("score", crops, fut, len(crops)))
        return fut

    def quality_map(self, image: torch.Tensor, patch: int | None, stride: int | None) -> Future:
        fut: Future = Future()
        self._q.put(_Job("map", (image, patch, stride), fut))
        return fut

    def waiting(self) -> int:
        return self._q.qsize()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    # -- the thread
    def _next(self, block: bool) -> _Job | None | bool:
        if self._pending:
            return self._pending.pop(0)
        try:
            return self._q.get(block=block)
        except queue.Empty:
            return False

    def _run(self) -> None:
        while True:
            job = self._next(block=True)
            if job is None:
                return
            assert isinstance(job, _Job)
            if job.kind == "map":
                self._do(job, self._run_map)
                continue
            jobs = [job]
            n = job.n_images
            while n < self.batch_size:  # merge score jobs that are already waiting
                more = self._next(block=False)
                if more is False:
                    break
                if more is None:
                    self._q.put(None)
                    break
                assert isinstance(more, _Job)
                if more.kind != "score" or n + more.n_images > self.batch_size:
                    self._pending.append(more)
                    break
                jobs.append(more)
                n += more.n_images
            self._score_batch(jobs)

    def _do(self, job: _Job, fn: Any) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(fn(job.payload))
        except BaseException as e:  # handed to the request, which answers without a traceback
            job.future.set_exception(e)

    def _run_map(self, payload: Any) -> Any:
        from shamisa.inference.maps import quality_maps

        image, patch, stride = payload
        t0 = time.perf_counter()
        out = quality_maps(self.model, [image], patch=patch, stride=stride)[0]
        self._account(1, time.perf_counter() - t0)
        return out

    def _score_batch(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            crops = torch.stack([c for j in live for c in j.payload])
            t0 = time.perf_counter()
            raws: list[np.ndarray] = []
            for s in range(0, crops.shape[0], self.batch_size):
                with torch.inference_mode():
                    raws.append(self.model.raw_from_crops(crops[s : s + self.batch_size]).double().cpu().numpy())
            raw = np.concatenate(raws)
            self._account(len(raw), time.perf_counter() - t0)
        except BaseException as e:
            for j in live:
                j.future.set_exception(e)
            return
        start = 0
        for j in live:
            j.future.set_result(raw[start : start + j.n_images])
            start += j.n_images

    def _account(self, n: int, seconds: float) -> None:
        self.images_done += n
        self.batches_done += 1
        per = seconds / max(1, n)
        self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * per


class Admission:
    """A counter of requests inside the server, bounded by ``limit`` (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.in_flight = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.limit:
                self.refused += 1
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)

    def retry_after(self, seconds_per_image: float) -> int:
        """Seconds until about half the admitted requests are done (at least 1)."""
        return max(1, min(120, math.ceil(self.in_flight * seconds_per_image / 2)))
