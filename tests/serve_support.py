"""Helpers for the serving tests: a tiny random-weight checkpoint, a real uvicorn server on a free
loopback port (in a thread, so tests can read the engine's counters), and reference outputs from
`minillama.generate`."""

from __future__ import annotations

import codecs
import shutil
import socket
import threading
import time
from pathlib import Path

import torch

from minillama.generate import generate
from minillama.model import MiniLlama, ModelConfig
from minillama.tokenizer import Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_model(tokenizer: Tokenizer, context: int = 1024, seed: int = 0) -> MiniLlama:
    """A random `debug`-preset model. Weights drawn with std 0.5 rather than 0.02, so greedy text
    wanders over the vocabulary instead of repeating one token: comparisons then mean something."""
    torch.manual_seed(seed)
    config = ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size, initializer_range=0.5,
                                     max_position_embeddings=context, eos_token_id=tokenizer.eos_token_id)
    return MiniLlama(config).eval()


def build_checkpoint(directory: Path, tokenizer_dir: Path, context: int = 1024) -> Path:
    """`tiny_model` saved with the tokenizer beside it, as `minillama serve --checkpoint` expects."""
    tiny_model(Tokenizer.from_pretrained(tokenizer_dir), context).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, directory / name)
    return directory


def reference(model: MiniLlama, tokenizer: Tokenizer, prompt_ids: list[int], max_tokens: int,
              stop_ids: tuple[int, ...]) -> tuple[str, int, str]:
    """Greedy (text, completion tokens, finish reason) from `minillama.generate`, one prompt alone."""
    ids = torch.tensor([prompt_ids])
    out = generate(model, ids, max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=stop_ids)
    new = out[0, len(prompt_ids):].tolist()
    stop_at = next((i for i, t in enumerate(new) if t in stop_ids), None)
    if stop_at is None:  # cut by the limit: an unfinished last character is left out, not shown as U+FFFD
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(tokenizer.decode_bytes(new))
        return text, len(new), "length"
    return tokenizer.decode(new[:stop_at]), stop_at + 1, "stop"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """`with LiveServer(app) as server:` uvicorn serving `app` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.socket = free_socket()
        self.port = self.socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def engine(self):
        return self.app.state.served.engine

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
