"""The batching engine: one thread that decodes every running request together.

HTTP handlers `submit` requests from the event loop; the engine thread admits them into free rows
of its `SlotCache` (prefilling new prompts together), then runs one decode step for all live rows,
samples each row's next token with that request's own settings and random generator, turns tokens
into text (never half a character, stop strings held back), and reports each piece through the
request's sink. Requests join and leave between steps (continuous batching), so a short request
never waits for a long one, and a cancelled one (its client went away) leaves at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minillama.generate import SamplingConfig, TextStreamer, decode_one_token, new_cache, prefill, sample
from minillama.model import MiniLlama
from minillama.serve.slots import SlotCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. prompt_ids must be non-empty and prompt + max_tokens must fit the
    engine's context (the HTTP layer checks both). A token in stop_token_ids or text matching a stop
    string ends it (neither is shown); seed makes sampling reproducible, whatever else is running."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingConfig = SamplingConfig(temperature=0.0)
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Event:
    """What a request's sink receives: new text, and with the last event a finish_reason
    ("stop", "length", "cancelled" or "error", with `error` saying what went wrong)."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


Sink = Callable[[Event], None]


class Handle:
    """The caller's side of a submitted request: `cancel()` stops it at the next step."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread; a bool write is atomic


@dataclass
class EngineStats:
    """Counters, written by the engine thread only."""

    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    largest_batch: int = 0
    active: int = 0
    waiting: int = 0


@dataclass
class Row:
    """A request being generated: its settings, text state and where its text goes."""

    request: GenerationRequest
    sink: Sink
    handle: Handle
    streamer: TextStreamer
    generator: torch.Generator | None
    generated: int = 0
    last_token: int = -1

    def accept(self, token: int) -> Event | None:
        """Take the next token; return the event to report (None when there is nothing to say)."""
        self.generated += 1
        self.last_token = token
        if token in self.request.stop_token_ids:
            return Event(self.streamer.flush(), "stop", self.generated)
        piece = self.streamer.push(token)
        if self.streamer.stopped:
            return Event(piece, "stop", self.generated)
        if self.generated >= self.request.max_tokens:  # cut short: half a character is no text
            return Event(piece + self.streamer.flush(drop_incomplete=True), "length", self.generated)
        return Event(piece) if piece else None


class BatchEngine:
    """Continuous batching over one static KV cache of `max_batch_size` rows x `context` tokens."""

    def __init__(self, model: MiniLlama, tokenizer: Any, max_batch_size: int = 16,
                 context: int | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        longest = model.config.max_position_embeddings
        self.context = longest if context is None else context
        if not 2 <= self.context <= longest:
            raise ValueError(f"context must be 2 to the model's max_position_embeddings ({longest}), "
                             f"got {self.context}")
        self.device = model.lm_head.weight.device
        with torch.inference_mode():  # allocated here, so a cache too big for memory fails at start-up
            self._slots = SlotCache(model, max_batch_size, self.context)
        self.stats = EngineStats()
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[Row] = deque()
        self._rows: list[Row] = []
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ----------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="minillama-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread; requests still running or waiting end with an error event."""
        if self._thread is not None:
            self._incoming.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, request: GenerationRequest, sink: Sink) -> Handle:
        """Queue a request; `sink` is called from the engine thread with each `Event`."""
        if not request.prompt_ids or len(request.prompt_ids) + request.max_tokens > self.context:
            raise ValueError(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_tokens}) "
                             f"must be 1 to {self.context} tokens")
        if self._thread is None:
            raise RuntimeError("the engine is not running; call start() first")
        handle = Handle()
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        streamer = TextStreamer(self.tokenizer, request.stop_strings)
        self._incoming.put(Row(request, sink, handle, streamer, generator))
        return handle

    async def stream(self, requests: Sequence[GenerationRequest]) -> AsyncIterator[tuple[int, Event]]:
        """Submit requests; yield (index, event) on the running event loop as events come. Closing
        the iterator early (e.g. the client disconnected) cancels what is still running."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def sink_for(index: int) -> Sink:
            return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))

        handles = []
        try:
            for i, request in enumerate(requests):
                handles.append(self.submit(request, sink_for(i)))
            running = len(handles)
            while running:
                index, event = await events.get()
                running -= event.finish_reason is not None
                yield index, event
        finally:
            for handle in handles:
                handle.cancel()

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        slots = self._slots
        with torch.inference_mode():
            while self._take_incoming(block=not self._rows and not self._waiting):
                try:
                    if self._waiting and slots.free:
                        self._admit(slots)
                    if self._rows:
                        self._decode(slots)
                except Exception as exc:  # a failed step must not take the server down
                    log.exception("generation step failed")
                    self._fail_all(slots, f"generation failed: {exc}")
            self._fail_all(slots, "the server is shutting down")

    def _take_incoming(self, block: bool) -> bool:
        """Move submitted requests to the waiting line; False once close() was called."""
        while True:
            try:
                row = self._incoming.get(block=block)
            except queue.Empty:
                return True
            if row is None:
                return False
            self._waiting.append(row)
            self.stats.submitted += 1
            self.stats.waiting = len(self._waiting)
            block = False

    def _admit(self, slots: SlotCache) -> None:
        """Prefill as many waiting prompts as there are free rows, together, into the batch."""
        new = []
        while self._waiting and len(new) < slots.free:
            row = self._waiting.popleft()
            if row.handle.cancelled:
                event = Event(finish_reason="cancelled")
                self._send(row, event)
                self._count_finished(event)
            else:
                new.append(row)
        self.stats.waiting = len(self._waiting)
        if not new:
            return
        input_ids, attention_mask = self._left_pad([row.request.prompt_ids for row in new])
        prefilled = new_cache(self.model, len(new), input_ids.shape[1])
        padded = not bool(attention_mask.all())
        logits = prefill(self.model, input_ids, prefilled, attention_mask if padded else None)
        slots.add(prefilled, attention_mask)
        first = len(self._rows)
        self._rows += new
        self._advance(slots, logits, range(first, len(self._rows)))

    def _decode(self, slots: SlotCache) -> None:
        """One step for every live row: feed its last token, sample its next."""
        slots.make_room()
        tokens = torch.tensor([[row.last_token] for row in self._rows], device=self.device)  # (n, 1)
        positions = torch.tensor(slots.lengths, device=self.device)[:, None]  # (n, 1)
        logits = decode_one_token(self.model, tokens, positions, slots.view())  # (n, V)
        slots.advanced()
        self.stats.decode_steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(self._rows))
        self._advance(slots, logits, range(len(self._rows)))

    def _advance(self, slots: SlotCache, logits: torch.Tensor, rows: range) -> None:
        """Sample the next token of `rows` (logits (len(rows), V)), report it, retire finished rows."""
        tokens = self._sample(logits, [self._rows[i] for i in rows])
        done = []
        for i, token in zip(rows, tokens, strict=True):
            row = self._rows[i]
            if row.handle.cancelled:
                event = Event(finish_reason="cancelled", completion_tokens=row.generated)
            else:
                event = row.accept(token)
                self.stats.generated_tokens += 1
            if event is not None and not self._send(row, event):
                event = Event(finish_reason="cancelled", completion_tokens=row.generated)
            if event is not None and event.finish_reason is not None:
                done.append(i)
                self._count_finished(event)
        for i in sorted(done, reverse=True):  # from the end: each removal moves the last row into i
            slots.remove(i)
            self._rows[i] = self._rows[-1]
            self._rows.pop()
        self.stats.active = len(self._rows)

    def _sample(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        """Greedy rows in one argmax; sampled rows one by one, each with its own settings and generator."""
        tokens = [0] * len(rows)
        greedy = [j for j, row in enumerate(rows) if row.request.sampling.greedy]
        if greedy:
            chosen = sample(logits[greedy], SamplingConfig(temperature=0.0)).tolist()
            for j, token in zip(greedy, chosen, strict=True):
                tokens[j] = token
        for j, row in enumerate(rows):
            if not row.request.sampling.greedy:
                tokens[j] = int(sample(logits[j:j + 1], row.request.sampling, row.generator))
        return tokens

    def _left_pad(self, prompts: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> input_ids, attention_mask (k, longest), padded on the left."""
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros(len(prompts), longest, dtype=torch.long)
        for r, prompt in enumerate(prompts):
            ids[r, longest - len(prompt):] = torch.tensor(prompt)
            mask[r, longest - len(prompt):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _send(self, row: Row, event: Event) -> bool:
        """Give the event to the row's sink; False if the sink is gone (its event loop closed)."""
        try:
            row.sink(event)
            return True
        except Exception:  # noqa: BLE001 - whatever the sink raises, only this request is affected
            row.handle.cancel()
            return False

    def _count_finished(self, event: Event) -> None:
        if event.finish_reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1

    def _fail_all(self, slots: SlotCache, message: str) -> None:
        """End every running and waiting request with an error and empty the batch."""
        for row in [*self._rows, *self._waiting]:
            self._send(row, Event(finish_reason="error", error=message, completion_tokens=row.generated))
        self._rows.clear()
        self._waiting.clear()
        while slots.rows:
            slots.remove(slots.rows - 1)
        self.stats.active = self.stats.waiting = 0
