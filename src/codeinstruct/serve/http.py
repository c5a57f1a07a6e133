"""HTTP plumbing shared by the engine and proxy routes.

- `Admission`: at most `capacity` samples admitted at once (running or queued); one more is a 429.
- `SSEResponse`: a server-sent-event stream whose clean-up (cancel the generation, release the
  admission, close the upstream) runs however the stream ends: finished, failed, or the client gone.
- `until_disconnected`: runs a non-streaming request, cancelled the moment its client disconnects.
- `Attributor`: the attribution check of a finished text, on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from codeinstruct.errors import CodeinstructError
from codeinstruct.serve.schemas import ApiError


class Ticket:
    def __init__(self, admission: Admission, samples: int):
        self.admission = admission
        self.samples = samples
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.active -= self.samples


class Admission:
    """Counts samples in flight (used from the event loop only, so no lock)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.active = 0

    def admit(self, samples: int) -> Ticket:
        if samples > self.capacity:
            raise ApiError(
                400,
                f"this request asks for {samples} samples; the server holds at most {self.capacity} at once",
                param="n",
            )
        if self.active + samples > self.capacity:
            raise ApiError(
                429,
                f"the server is at capacity ({self.active} of {self.capacity} samples running or queued); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.active += samples
        return Ticket(self, samples)


Cleanup = Callable[[], None | Awaitable[None]]


class SSEResponse(StreamingResponse):
    """`text/event-stream` over an async iterator of bytes; `cleanup()` runs once, however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Cleanup):
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._content = content
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await run_cleanup(self._cleanup, self._content)


async def run_cleanup(cleanup: Cleanup, content=None) -> None:
    if content is not None and hasattr(content, "aclose"):
        try:
            await content.aclose()
        except RuntimeError:  # still running in another task: it is being cancelled there
            pass
    result = cleanup()
    if inspect.isawaitable(result):
        await result


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(request: Request, work: Awaitable):
    """The result of `work`, or ClientGone (and `work` cancelled) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: whatever it ended with, nobody is waiting for it
    raise ClientGone


class Attributor:
    """`AttributionIndex.check` of finished texts on its own threads; None when no index is loaded."""

    def __init__(self, index=None, threads: int = 2):
        self.index = index
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="attribution") if index else None

    @property
    def enabled(self) -> bool:
        return self.index is not None

    async def check(self, text: str) -> dict | None:
        if self.index is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(self.executor, self.index.check, text)
        except CodeinstructError as e:
            return {"matches": [], "licenses": {}, "error": str(e)}
        return report.as_dict()

    async def check_all(self, texts: list[str]) -> list[dict | None]:
        return list(await asyncio.gather(*(self.check(t) for t in texts)))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
