"""The HTTP API through real clients: the official `openai` package and raw httpx, against uvicorn
on a free 127.0.0.1 port. Greedy answers must equal `minillama.generate` run on the prompt alone."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_support import LiveServer, build_checkpoint, free_socket, reference  # noqa: E402

from minillama.model import MiniLlama  # noqa: E402
from minillama.serve.app import ServeConfig, create_app  # noqa: E402
from minillama.tokenizer import Tokenizer, render_chat  # noqa: E402

MODEL = "tiny-test"
CONTEXT = 1024
TIMEOUT = 60  # seconds any one client call may take


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(small_corpus, tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tiny-test", small_corpus[0], context=CONTEXT)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return MiniLlama.from_pretrained(checkpoint).eval(), Tokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def server(loaded):
    model, tokenizer = loaded
    with LiveServer(create_app(model, tokenizer, ServeConfig(MODEL, max_batch_size=8))) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def expected_completion(loaded, prompt, max_tokens):
    model, tokenizer = loaded
    return reference(model, tokenizer, tokenizer.encode(prompt), max_tokens, (tokenizer.eos_token_id,))


def expected_chat(loaded, messages, max_tokens):
    model, tokenizer = loaded
    ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    stops = (tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>"))
    return reference(model, tokenizer, ids, max_tokens, stops), len(ids)


# ---- the openai client ------------------------------------------------------------------------------
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.base_url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_completion_equals_generate(client, loaded):
    prompt = "Once upon a time there was"
    text, tokens, finish = expected_completion(loaded, prompt, 40)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
    assert response.choices[0].text == text
    assert response.choices[0].finish_reason == finish
    assert response.usage.completion_tokens == tokens
    assert response.usage.prompt_tokens == len(loaded[1].encode(prompt))
    assert response.object == "text_completion" and response.model == MODEL


def test_chat_equals_generate(client, loaded):
    messages = [{"role": "system", "content": "You tell stories."},
                {"role": "user", "content": "A story please"}]
    (text, tokens, finish), prompt_tokens = expected_chat(loaded, messages, 50)
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=50, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == finish
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, tokens)


def test_streaming_completion_and_chat(client, loaded):
    prompt = "The little dog"
    text, tokens, _ = expected_completion(loaded, prompt, 60)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == text
    assert sum(1 for p in pieces if p) > 5  # it really streams, piece by piece
    assert chunks[-1].usage.completion_tokens == tokens

    messages = [{"role": "user", "content": "Hello!"}]
    (text, _, finish), _ = expected_chat(loaded, messages, 60)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_is_server_sent_events_ending_in_done(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body, timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_seed_and_stop(client, loaded):
    settings = dict(model=MODEL, prompt="One day", max_tokens=20, temperature=1.0, top_p=0.9, n=3, seed=11)
    first = [c.text for c in client.completions.create(**settings).choices]
    again = [c.text for c in client.completions.create(**settings).choices]
    assert first == again  # seeded: reproducible
    assert len(set(first)) == 3  # each choice samples on its own
    text, _, _ = expected_completion(loaded, "One day", 30)
    stop = text[10:13]
    response = client.completions.create(model=MODEL, prompt="One day", max_tokens=30, temperature=0,
                                         stop=[stop])
    assert response.choices[0].text == text[:text.index(stop)]
    assert response.choices[0].finish_reason == "stop"


# ---- bad input ------------------------------------------------------------------------------------
def chat(**fields):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


BAD_REQUESTS = {
    "malformed JSON": ("/v1/completions", b'{"model": "tiny-test", "prompt": "Hi",', None),
    "not an object": ("/v1/completions", b"[1, 2]", None),
    "unknown model": ("/v1/chat/completions", {**chat(), "model": "gpt-4"}, "model"),
    "missing messages": ("/v1/chat/completions", {"model": MODEL}, "messages"),
    "empty messages": ("/v1/chat/completions", chat(messages=[]), "messages"),
    "bad role": ("/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "Hi"}]),
                 "messages.0.role"),
    "missing prompt": ("/v1/completions", {"model": MODEL}, "prompt"),
    "max_tokens beyond the context": ("/v1/completions",
                                      {"model": MODEL, "prompt": "Hi", "max_tokens": CONTEXT}, "max_tokens"),
    "max_tokens 0": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 0}, "max_tokens"),
    "temperature < 0": ("/v1/chat/completions", chat(temperature=-0.5), "temperature"),
    "top_p 0": ("/v1/chat/completions", chat(top_p=0), "top_p"),
    "top_p > 1": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "top_p": 1.5}, "top_p"),
    "n 0": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "n": 0}, "n"),
    "token id out of range": ("/v1/completions", {"model": MODEL, "prompt": [1, 10**6]}, "prompt"),
    "too many stops": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "stop": list("abcde")}, "stop"),
    "unsupported parameter": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "logprobs": 5}, None),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_an_openai_error(server, case):
    path, body, param = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.base_url + path, content=content, timeout=TIMEOUT,
                          headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


def test_errors_reach_the_openai_client_and_the_server_survives(client, server):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       temperature=-1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=CONTEXT)
    missing = httpx.get(server.base_url + "/v1/nothing", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices[0].finish_reason


# ---- concurrency ----------------------------------------------------------------------------------
async def good_completion(aclient, loaded, prompt, max_tokens):
    expected = expected_completion(loaded, prompt, max_tokens)
    response = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                                temperature=0)
    got = response.choices[0]
    return (got.text, response.usage.completion_tokens, got.finish_reason) == expected


async def good_stream_chat(aclient, loaded, content, max_tokens):
    messages = [{"role": "user", "content": content}]
    (text, _, finish), _ = expected_chat(loaded, messages, max_tokens)
    stream = await aclient.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                   temperature=0, stream=True)
    pieces, last = [], None
    async for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk.choices[0].finish_reason or last
    return ("".join(pieces), last) == (text, finish)


async def bad_request(http, base_url, case):
    path, body, _ = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await http.post(base_url + path, content=content, headers={"content-type": "application/json"})
    return response.status_code in (400, 422) and "message" in response.json()["error"]


def test_sixteen_concurrent_clients_good_and_bad(server, loaded):
    """16 clients at once: greedy completions and streamed chats (each must equal its unbatched
    `generate` result) mixed with bad requests (each must get its error)."""
    prompts = ["Once upon a time", "The cat sat", "Lily", "A big red ball", "Tom and Sue went",
               "It was sunny", "The bird sang", "Mom said"]

    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", timeout=TIMEOUT,
                                     max_retries=0)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            jobs = [good_completion(aclient, loaded, p, 20 + 10 * i) for i, p in enumerate(prompts)]
            jobs += [good_stream_chat(aclient, loaded, c, 40) for c in ("Hi", "Tell me a story", "Why?")]
            jobs += [bad_request(http, server.base_url, case) for case in
                     ("malformed JSON", "unknown model", "missing messages", "max_tokens beyond the context",
                      "temperature < 0")]
            assert len(jobs) == 16
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=2 * TIMEOUT)

    before = server.engine.stats.finished
    assert asyncio.run(main()) == [True] * 16
    assert server.engine.stats.finished - before == 11
    assert server.engine.stats.largest_batch > 1  # they were decoded together


# ---- disconnects ----------------------------------------------------------------------------------
def wait_until_idle(engine, seconds=10.0):
    deadline = time.monotonic() + seconds
    while (engine.stats.active or engine.stats.waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not engine.stats.active and not engine.stats.waiting


def test_a_client_that_disconnects_mid_stream_stops_its_generation(server):
    engine = server.engine
    assert wait_until_idle(engine)
    cancelled, generated = engine.stats.cancelled, engine.stats.generated_tokens
    body = {"model": MODEL, "prompt": "Once", "max_tokens": CONTEXT - 8, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body, timeout=TIMEOUT) as response:
        events = (line for line in response.iter_lines() if line)
        for _ in range(3):
            assert next(events).startswith("data: ")
    # Leaving the block closed the connection mid-stream.
    assert wait_until_idle(engine), "generation went on after the client left"
    assert engine.stats.cancelled == cancelled + 1
    assert engine.stats.generated_tokens - generated < CONTEXT - 8


def test_a_client_that_gives_up_on_a_plain_request_stops_its_generation(server):
    engine = server.engine
    assert wait_until_idle(engine)
    cancelled = engine.stats.cancelled
    body = {"model": MODEL, "prompt": "Once", "max_tokens": CONTEXT - 8, "ignore_eos": True}
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/completions", json=body, timeout=httpx.Timeout(TIMEOUT, read=0.05))
    assert wait_until_idle(engine)
    assert engine.stats.cancelled == cancelled + 1
    assert time.monotonic() - started < 10


# ---- authentication and the command line ----------------------------------------------------------
def test_api_key_is_required_when_set(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, ServeConfig(MODEL, api_key="s3cret", max_batch_size=2))
    with LiveServer(app) as live:
        url = live.base_url + "/v1"
        good = openai.OpenAI(base_url=url, api_key="s3cret", timeout=TIMEOUT, max_retries=0)
        assert good.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
        for wrong in ("s3cre", "s3cret!", "S3CRET"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key=wrong, timeout=TIMEOUT, max_retries=0).models.list()
        response = httpx.post(url + "/completions", json={"model": MODEL, "prompt": "Hi"}, timeout=TIMEOUT)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(live.base_url + "/health", timeout=TIMEOUT).status_code == 200


def test_the_serve_command_binds_loopback_and_reads_the_key_from_the_environment(checkpoint):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "MINILLAMA_API_KEY": "from-env", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "minillama", "serve", "--checkpoint", str(checkpoint),
               "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="from-env", timeout=TIMEOUT, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-test"]  # the checkpoint's folder name
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).status_code == 401
    finally:
        process.terminate()
        output = process.communicate(timeout=TIMEOUT)[0]
    assert f"http://127.0.0.1:{port}" in output


# ---- limits --------------------------------------------------------------------------------------------
def test_a_body_over_the_limit_gets_413_before_it_is_read(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, ServeConfig(MODEL, max_batch_size=2, max_body_bytes=1000))
    with LiveServer(app) as live:
        url = live.base_url + "/v1/completions"
        big = json.dumps({"model": MODEL, "prompt": "x" * 5000, "max_tokens": 1}).encode()
        declared = httpx.post(url, content=big, headers={"content-type": "application/json"}, timeout=TIMEOUT)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
        chunked = httpx.post(url, content=iter([big[:600], big[600:]]), timeout=TIMEOUT,
                             headers={"content-type": "application/json"})  # no Content-Length
        assert chunked.status_code == 413
        small = httpx.post(url, json={"model": MODEL, "prompt": "Hi", "max_tokens": 1}, timeout=TIMEOUT)
        assert small.status_code == 200
        assert live.engine.stats.submitted == 1  # only the small request reached the engine


def test_a_completion_cut_inside_a_character_ends_before_it(client, loaded):
    """max_tokens may end between the bytes of one character: those bytes are left out, not shown as
    U+FFFD (Python's incremental UTF-8 decoder is the reference)."""
    import codecs

    import torch

    from minillama.generate import generate

    model, tokenizer = loaded
    for prompt in ("Once upon a time", "The dog", "Lily said", "A big red ball"):
        ids = tokenizer.encode(prompt)
        new = generate(model, torch.tensor([ids]), max_new_tokens=80, temperature=0.0,
                       stop_token_ids=())[0, len(ids):].tolist()
        cuts = [k for k in range(1, 81) if codecs.getincrementaldecoder("utf-8")("replace").decode(
            tokenizer.decode_bytes(new[:k])) != tokenizer.decode(new[:k])]
        if cuts:
            break
    assert cuts, "no greedy continuation ends inside a character"
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=cuts[0], temperature=0,
                                         extra_body={"ignore_eos": True})
    text = response.choices[0].text
    assert response.choices[0].finish_reason == "length" and tokenizer.decode(new[:cuts[0]]).endswith("\ufffd")
    assert text == codecs.getincrementaldecoder("utf-8")("replace").decode(tokenizer.decode_bytes(new[:cuts[0]]))
