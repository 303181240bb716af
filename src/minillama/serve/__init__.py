"""Serving: an OpenAI-compatible HTTP API with continuous batching, and a web playground.

- `minillama.serve.app.create_app(model, tokenizer, ServeConfig(...))`: the FastAPI app.
- `minillama.serve.engine.BatchEngine`: the thread that decodes every running request together.
- `minillama.serve.slots.SlotCache`: the static KV cache whose rows requests take and give back.
- `minillama serve --checkpoint DIR`: the command (needs the `serve` extra: fastapi, uvicorn).
Nothing is imported here, so `minillama --help` does not load FastAPI or torch. See docs/serving.md.
"""
