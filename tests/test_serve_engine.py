"""The batching engine without HTTP: the shared slot cache gives the logits of an uncached forward,
and greedy requests that join and leave a running batch get exactly `minillama.generate`'s output."""

import threading

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed")  # noqa: E402 - before serve imports

from serve_support import reference, tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

from minillama.generate import SamplingConfig, decode_one_token, new_cache, prefill  # noqa: E402
from minillama.serve.engine import BatchEngine, GenerationRequest  # noqa: E402
from minillama.serve.slots import SlotCache  # noqa: E402


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, context=256)


def run_all(engine, requests, delays=None):
    """Submit requests (from threads, optionally staggered); return each one's (text, last event)."""
    results = [None] * len(requests)

    def run(i):
        done, pieces = threading.Event(), []

        def sink(event):
            pieces.append(event)
            if event.finish_reason:
                done.set()

        engine.submit(requests[i], sink)
        assert done.wait(60), f"request {i} did not finish"
        results[i] = ("".join(e.text for e in pieces), pieces[-1])

    threads = []
    for i in range(len(requests)):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
        if delays:
            threading.Event().wait(delays[i])
    for thread in threads:
        thread.join()
    return results


@torch.no_grad()
def test_slot_cache_gives_the_logits_of_a_full_forward(model):
    """Rows join (longer and shorter than the batch), leave, and the columns shift both ways; every
    decode step's logits equal an uncached forward over that row's whole sequence."""
    g = torch.Generator().manual_seed(1)
    slots = SlotCache(model, max_batch=3, capacity=24)
    sequences = []

    def join(length):
        prompt = torch.randint(3, 500, (1, length), generator=g)
        cache = new_cache(model, 1, length)
        prefill(model, prompt, cache)
        slots.add(cache, torch.ones(1, length, dtype=torch.long))
        sequences.append(prompt[0].tolist() + [int(torch.randint(3, 500, (), generator=g))])

    def step():
        slots.make_room()
        tokens = torch.tensor([[s[-1]] for s in sequences])
        positions = torch.tensor(slots.lengths)[:, None]
        logits = decode_one_token(model, tokens, positions, slots.view())
        slots.advanced()
        for row, sequence in enumerate(sequences):
            full = model(torch.tensor([sequence])).logits[0, -1]
            torch.testing.assert_close(logits[row], full, rtol=1e-4, atol=1e-4)
            sequence.append(int(torch.randint(3, 500, (), generator=g)))

    join(4)
    for _ in range(3):
        step()
    assert slots.length == 7
    join(12)  # longer than the batch so far: everyone shifts right
    assert slots.length == 12 and slots.lengths == [7, 12]
    step()
    join(3)
    step()
    slots.remove(1)  # the middle row leaves; the last moves into its place
    sequences[1] = sequences.pop()
    assert slots.lengths == [9, 4]
    lengths_seen = []
    for _ in range(14):  # runs into the end of the 24 columns: unused columns are dropped on the left
        step()
        lengths_seen.append(slots.length)
    assert max(lengths_seen) == 24 and lengths_seen[-1] < 24
    assert slots.lengths == [23, 18]


def test_staggered_greedy_requests_equal_generate(model, tokenizer):
    """More requests than rows, arriving while others run: each equals its run alone in `generate`."""
    eos = tokenizer.eos_token_id
    prompts = ["Once upon a time", "The cat", "Lily and Tom went to the park to play with a big red ball",
               "A", "Sun", "He said hello to the dog and", "x", "They were happy. The end."]
    requests = [GenerationRequest(tuple(tokenizer.encode(p)), 10 + 9 * i, stop_token_ids=frozenset({eos}))
                for i, p in enumerate(prompts)]
    engine = BatchEngine(model, tokenizer, max_batch_size=3, context=96)
    engine.start()
    try:
        results = run_all(engine, requests, delays=[0.004 * (i % 3) for i in range(len(requests))])
    finally:
        engine.close()
    for request, (text, last) in zip(requests, results, strict=True):
        expected = reference(model, tokenizer, list(request.prompt_ids), request.max_tokens, (eos,))
        assert (text, last.completion_tokens, last.finish_reason) == expected
    assert engine.stats.largest_batch == 3
    assert engine.stats.finished == len(prompts)


def test_stop_token_and_stop_string(model, tokenizer):
    prompt = tuple(tokenizer.encode("Once upon a time"))
    full = reference(model, tokenizer, list(prompt), 30, ())
    greedy = GenerationRequest(prompt, 30)
    engine = BatchEngine(model, tokenizer, max_batch_size=4)
    engine.start()
    try:
        [(text, last)] = run_all(engine, [greedy])
        assert (text, last.finish_reason, last.completion_tokens) == (full[0], "length", 30)
        # Stop at a token greedy decoding produces that it has not produced before.
        from minillama.generate import generate

        tokens = generate(model, torch.tensor([prompt]), max_new_tokens=30, temperature=0.0,
                          stop_token_ids=())[0, len(prompt):].tolist()
        k = next(k for k in range(2, 30) if tokens[k] not in tokens[:k])
        stop_at_k = GenerationRequest(prompt, 30, stop_token_ids=frozenset({tokens[k]}))
        [(text, last)] = run_all(engine, [stop_at_k])
        assert (text, last.completion_tokens) == (tokenizer.decode(tokens[:k]), k + 1)
        assert last.finish_reason == "stop"
        # A stop string cuts the text before it, wherever the token boundaries fall.
        stop = full[0][12:15]
        [(text, last)] = run_all(engine, [GenerationRequest(prompt, 30, stop_strings=(stop,))])
        assert text == full[0][:full[0].index(stop)] and last.finish_reason == "stop"
    finally:
        engine.close()


def test_seeded_sampling_does_not_depend_on_the_batch(model, tokenizer):
    prompt = tuple(tokenizer.encode("The dog"))
    seeded = GenerationRequest(prompt, 20, SamplingConfig(temperature=1.0, top_p=0.9), seed=5)
    others = [GenerationRequest(tuple(tokenizer.encode(p)), 25, SamplingConfig(temperature=0.7))
              for p in ("A bird", "Tom ran", "It was")]
    engine = BatchEngine(model, tokenizer, max_batch_size=4)
    engine.start()
    try:
        alone = run_all(engine, [seeded])[0][0]
        batched = run_all(engine, [*others, seeded])[-1][0]
        other_seed = run_all(engine, [GenerationRequest(prompt, 20, seeded.sampling, seed=6)])[0][0]
    finally:
        engine.close()
    assert alone == batched
    assert alone != other_seed


def test_cancel_stops_a_running_request(model, tokenizer):
    engine = BatchEngine(model, tokenizer, max_batch_size=2)
    engine.start()
    events, first = [], threading.Event()
    try:
        handle = engine.submit(GenerationRequest(tuple(tokenizer.encode("Once")), 250),
                               lambda e: (events.append(e), first.set()))
        assert first.wait(30)
        handle.cancel()
        for _ in range(500):
            if events[-1].finish_reason:
                break
            threading.Event().wait(0.01)
    finally:
        engine.close()
    assert events[-1].finish_reason == "cancelled"
    assert events[-1].completion_tokens < 250
    assert engine.stats.cancelled == 1


def test_requests_that_do_not_fit_are_refused(model, tokenizer):
    engine = BatchEngine(model, tokenizer, max_batch_size=2, context=64)
    engine.start()
    try:
        with pytest.raises(ValueError, match="must be 1 to 64 tokens"):
            engine.submit(GenerationRequest((1,) * 60, 5), lambda e: None)
        with pytest.raises(ValueError):
            engine.submit(GenerationRequest((), 5), lambda e: None)
    finally:
        engine.close()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BatchEngine(model, tokenizer, context=model.config.max_position_embeddings + 1)
