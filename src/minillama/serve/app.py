"""The FastAPI application: OpenAI-compatible routes over the batching engine, and the playground.

    GET  /                      the playground page (static, works offline)
    GET  /health                {"status": "ok", ...}, never needs the API key
    GET  /v1/models             the one model served
    POST /v1/completions        prompt -> text
    POST /v1/chat/completions   messages (ChatML) -> assistant reply, stopping at <|im_end|>

Handlers only validate, tokenize and format: generation runs on the engine's thread, so the event
loop stays free. `stream: true` answers with server-sent events ending in `data: [DONE]`; a client
that goes away cancels its generation. Every error is an OpenAI-style body, never a crash.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minillama.generate import SamplingConfig, special
from minillama.serve import protocol
from minillama.serve.engine import BatchEngine, Event, GenerationRequest
from minillama.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, GenerationParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """model_name: the id clients must send as `model`; api_key: when set, every /v1 request needs
    `Authorization: Bearer <api_key>`; max_batch_size: rows decoded together; context: the most
    tokens (prompt + completion) of one request, default the model's max_position_embeddings. The
    KV cache holds max_batch_size x context tokens. A request body over max_body_bytes gets 413
    before it is parsed."""

    model_name: str = "minillama"
    api_key: str | None = None
    max_batch_size: int = 16
    context: int | None = None
    max_body_bytes: int = 4 << 20


@dataclass
class Served:
    """What the routes share: the engine, the tokenizer and the settings."""

    engine: BatchEngine
    tokenizer: Any
    config: ServeConfig
    created: int

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(400, f"model {name!r} is not served here; use {self.config.model_name!r} "
                           "(see GET /v1/models)", param="model", code="model_not_found")

    def stop_token_ids(self, params: GenerationParams, chat: bool) -> frozenset[int]:
        """End of text (and, in chat, the end of the assistant's turn), unless ignore_eos."""
        if params.ignore_eos:
            return frozenset()
        return frozenset(special.stop_token_ids(self.engine.model.config, self.tokenizer, chat=chat))

    def plan(self, params: GenerationParams, prompts: list[list[int]], max_tokens: int | None,
             stop_token_ids: frozenset[int], prompt_param: str) -> list[GenerationRequest]:
        """One engine request per (prompt, choice); max_tokens None = as many as the context holds."""
        context = self.engine.context
        sampling = SamplingConfig(params.temperature, top_k=params.top_k or None, top_p=params.top_p,
                                  min_p=params.min_p or None)
        requests = []
        for prompt in prompts:
            if len(prompt) >= context:
                raise APIError(400, f"the prompt has {len(prompt)} tokens; the model's context is {context} "
                               "tokens, shorten it", param=prompt_param, code="context_length_exceeded")
            budget = context - len(prompt) if max_tokens is None else max_tokens
            if len(prompt) + budget > context:
                raise APIError(400, f"max_tokens ({budget}) + the prompt ({len(prompt)} tokens) exceed the "
                               f"model's context of {context} tokens; lower max_tokens to at most "
                               f"{context - len(prompt)}",
                               param="max_tokens", code="context_length_exceeded")
            for choice in range(params.n):
                requests.append(GenerationRequest(tuple(prompt), budget, sampling, stop_token_ids,
                                                  tuple(params.stop), choice_seed(params.seed, choice)))
        return requests

    def completion_prompts(self, prompt: str | list) -> list[list[int]]:
        """A prompt as text, texts, token ids or lists of ids -> token id lists (an empty one starts
        from the end-of-text token, as GPT-2 does)."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        vocab = self.tokenizer.vocab_size
        prompts = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]
        for ids in prompts:
            if any(not 0 <= i < vocab for i in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        start = special.start_token_id(self.engine.model.config, self.tokenizer)
        if any(not ids for ids in prompts) and start is None:
            raise APIError(400, "the prompt is empty and the tokenizer has no start token", param="prompt")
        return [ids or [start] for ids in prompts]

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        from minillama.tokenizer import render_chat

        try:
            messages = [m.as_chatml() for m in body.messages]
            ids, _ = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        return ids


def choice_seed(seed: int | None, choice: int) -> int | None:
    """Each of the n choices gets its own reproducible stream, derived from (seed, choice)."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**64, choice]).generate_state(1, np.uint64)[0])


# ---- responses ----------------------------------------------------------------------------------------
class EventStream(StreamingResponse):
    """Server-sent events. However the response ends (done, client gone, cancelled), the event
    generator is closed at once, which cancels the generation behind it."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def server_sent_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except APIError as exc:  # the status line is sent already: report in the stream
        yield f"data: {json.dumps(exc.body())}\n\n"
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


async def collect(engine: BatchEngine, requests: list[GenerationRequest],
                  request: Request) -> list[tuple[str, Event]]:
    """Run requests to the end: (text, last event) per request. If the client disconnects first,
    generation is cancelled and APIError(499) raised."""

    async def run() -> list[tuple[str, Event]]:
        texts: list[list[str]] = [[] for _ in requests]
        finals: list[Event] = [Event()] * len(requests)
        async for index, event in engine.stream(requests):
            check_event(event)
            texts[index].append(event.text)
            finals[index] = event
        return [("".join(t), final) for t, final in zip(texts, finals, strict=True)]

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(run()), asyncio.ensure_future(disconnected())
    await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if not work.done():
        work.cancel()
        raise APIError(499, "the client closed the connection", kind="client_closed_request")
    return work.result()


def check_event(event: Event) -> None:
    if event.finish_reason == "error":
        raise APIError(500, event.error or "generation failed", kind="server_error")


# ---- the application ------------------------------------------------------------------------------
def create_app(model: Any, tokenizer: Any, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The app serving `model` (a MiniLlama) with `tokenizer`; its engine thread runs while the app
    does (FastAPI lifespan). `app.state.served.engine.stats` has the engine's counters."""
    engine = BatchEngine(model, tokenizer, config.max_batch_size, config.context)
    served = Served(engine, tokenizer, config, int(time.time()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.engine.start()
        try:
            yield
        finally:
            served.engine.close()

    # No /docs: its page loads scripts from a CDN, and this server must work offline.
    app = FastAPI(title="minillama", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.state.served = served
    install_error_handlers(app)
    authorized = Depends(bearer_auth(config.api_key))
    page = resources.files("minillama.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = served.engine.stats
        return {"status": "ok", "model": config.model_name, "active": stats.active, "waiting": stats.waiting}

    @app.get("/v1/models", dependencies=[authorized])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [protocol.model_card(config.model_name, served.created)]}

    @app.get("/v1/models/{model_id}", dependencies=[authorized])
    async def model_card(model_id: str) -> dict[str, Any]:
        served.check_model(model_id)
        return protocol.model_card(config.model_name, served.created)

    app.post("/v1/completions", dependencies=[authorized])(completions_route(served))
    app.post("/v1/chat/completions", dependencies=[authorized])(chat_route(served))
    return app


def completions_route(served: Served) -> Callable:
    async def completions(body: CompletionRequest, request: Request) -> Any:
        served.check_model(body.model)
        prompts = await run_in_threadpool(served.completion_prompts, body.prompt)
        stops = served.stop_token_ids(body, chat=False)
        requests = served.plan(body, prompts, body.max_tokens, stops, "prompt")
        reply = Reply(served, body, requests, sum(len(p) for p in prompts) * body.n, chat=False)
        return await reply.respond(request)

    return completions


def chat_route(served: Served) -> Callable:
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        served.check_model(body.model)
        prompt = await run_in_threadpool(served.chat_prompt, body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        requests = served.plan(body, [prompt], max_tokens, served.stop_token_ids(body, chat=True), "messages")
        return await Reply(served, body, requests, len(prompt) * body.n, chat=True).respond(request)

    return chat_completions


@dataclass
class Reply:
    """The answer to one completion or chat request: a JSON body, or a stream of chunks."""

    served: Served
    body: GenerationParams
    requests: list[GenerationRequest]
    prompt_tokens: int
    chat: bool

    def __post_init__(self) -> None:
        self.id = protocol.new_id("chatcmpl" if self.chat else "cmpl")

    async def respond(self, request: Request) -> Any:
        if self.body.stream:
            chunks = self.chat_chunks() if self.chat else self.completion_chunks()
            return EventStream(server_sent_events(chunks), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
        results = await collect(self.served.engine, self.requests, request)
        make_choice = protocol.chat_choice if self.chat else protocol.completion_choice
        choices = [make_choice(i, text, final.finish_reason) for i, (text, final) in enumerate(results)]
        used = protocol.usage(self.prompt_tokens, sum(final.completion_tokens for _, final in results))
        return self.response("chat.completion" if self.chat else "text_completion", choices, used)

    def response(self, kind: str, choices: list[dict[str, Any]], used: dict[str, int] | None = None) -> dict:
        return protocol.response_body(kind, self.id, self.body.model, choices, used)

    async def completion_chunks(self) -> AsyncIterator[dict[str, Any]]:
        completion_tokens = 0
        async for index, event in self.served.engine.stream(self.requests):
            check_event(event)
            completion_tokens += event.completion_tokens
            if event.text or event.finish_reason:
                choice = protocol.completion_choice(index, event.text, event.finish_reason)
                yield self.response("text_completion", [choice])
        if self.body.stream_options.include_usage:
            yield self.response("text_completion", [], protocol.usage(self.prompt_tokens, completion_tokens))

    async def chat_chunks(self) -> AsyncIterator[dict[str, Any]]:
        kind = "chat.completion.chunk"
        for index in range(len(self.requests)):  # OpenAI opens each choice with the role
            opening = protocol.chat_delta(index, {"role": "assistant", "content": ""}, None)
            yield self.response(kind, [opening])
        completion_tokens = 0
        async for index, event in self.served.engine.stream(self.requests):
            check_event(event)
            completion_tokens += event.completion_tokens
            if event.text:
                yield self.response(kind, [protocol.chat_delta(index, {"content": event.text}, None)])
            if event.finish_reason:
                yield self.response(kind, [protocol.chat_delta(index, {}, event.finish_reason)])
        if self.body.stream_options.include_usage:
            yield self.response(kind, [], protocol.usage(self.prompt_tokens, completion_tokens))


# ---- limits, auth and errors ------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before any of it is parsed or
    tokenized (by its Content-Length, or while it arrives when it has none). The body is read here
    and handed on whole: the routes parse all of it anyway."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return None
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        pending = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> dict:
            return pending.pop() if pending else await receive()  # then e.g. http.disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        error = APIError(413, f"the request body is larger than {self.limit} bytes", code="request_too_large")
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)


# ---- auth and errors --------------------------------------------------------------------------------
def bearer_auth(api_key: str | None) -> Callable:
    """A dependency that checks `Authorization: Bearer <api_key>` in constant time (no-op without a key)."""
    expected = None if api_key is None else api_key.encode("utf-8")

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), expected):
            raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    return check


def install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes an OpenAI-style body: bad input 400, unknown route 404, bug 500."""

    def reply(error: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return reply(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(protocol.error_from_validation(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        return reply(protocol.error_from_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return reply(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return reply(APIError(500, f"internal error: {type(exc).__name__}", kind="server_error"))
