"""The playground page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
type a prompt, watch the text stream in, check it is the model's greedy answer, save a screenshot.

The browser comes from `tests/setup_browser.sh` (apt). If it is missing this test fails, it does
not skip: the page is part of the product. Screenshots go to the test's tmp dir and to
tests/artifacts/ (git-ignored) for people to look at.
"""

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from serve_support import LiveServer, reference, tiny_model  # noqa: E402

from minillama.serve.app import ServeConfig, create_app  # noqa: E402
from minillama.tokenizer import render_chat  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
MODEL = "playground-test"
TIMEOUT_MS = 30_000

# Records the text of an element each time the page changes it (while the reply streams in).
WATCH = """(selector) => {
    window.seenTexts = [];
    const target = document.querySelector(selector);
    new MutationObserver(() => window.seenTexts.push(target.textContent))
        .observe(target, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tokenizer, single_thread):
    model = tiny_model(tokenizer, context=512)
    with LiveServer(create_app(model, tokenizer, ServeConfig(MODEL, max_batch_size=4))) as live:
        live.model = model
        yield live


@pytest.fixture
def page(server, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `sh tests/setup_browser.sh` "
                    "(apt-get install chromium chromium-driver) before the tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: pip install playwright (it drives Debian's chromium; "
                    "never `playwright install`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 760})
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.requests, page.errors = [], []
        page.on("request", lambda request: page.requests.append(request.url))
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server.base_url + "/")
        page.wait_for_function(f"document.getElementById('model-name').textContent === '{MODEL}'")
        yield page
        browser.close()


def set_controls(page, temperature, max_tokens):
    page.locator("#temperature").fill(str(temperature))
    page.locator("#max_tokens").fill(str(max_tokens))


def send_and_wait(page):
    page.click("#send")
    page.wait_for_selector("#status[data-state=done]")


def save_screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)


def test_completion_streams_into_the_page(page, server, tokenizer, tmp_path):
    prompt = "Once upon a time, a little girl"
    expected, tokens, _ = reference(server.model, tokenizer, tokenizer.encode(prompt), 120,
                                    (tokenizer.eos_token_id,))
    page.fill("#prompt", prompt)
    set_controls(page, temperature=0, max_tokens=120)
    page.evaluate(WATCH, "#output")
    send_and_wait(page)

    assert page.text_content("#output .generated") == expected
    assert page.text_content("#output") == prompt + expected
    seen = page.evaluate("window.seenTexts")
    assert all((prompt + expected).startswith(text) for text in seen)
    partial = [text for text in seen if len(prompt) < len(text) < len(prompt + expected)]
    assert len(partial) >= 5  # the reply showed piece by piece, before it was complete
    assert f"{tokens} tokens" in page.text_content("#status")
    save_screenshot(page, tmp_path, "serve_playground_completion.png")
    assert all(url.startswith(server.base_url) for url in page.requests)  # offline: nothing else fetched
    assert page.errors == []


def test_chat_mode_keeps_the_conversation(page, server, tokenizer, tmp_path):
    page.select_option("#mode", "chat")
    set_controls(page, temperature=0, max_tokens=40)
    messages = []
    for content in ("Hello!", "Tell me about the dog."):
        messages.append({"role": "user", "content": content})
        ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
        stops = (tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>"))
        expected = reference(server.model, tokenizer, ids, 40, stops)[0]
        page.fill("#prompt", content)
        send_and_wait(page)
        assert page.locator(".turn.assistant .content").last.text_content() == expected
        messages.append({"role": "assistant", "content": expected})
    roles = page.locator(".turn .role").all_text_contents()
    assert roles == ["user", "assistant", "user", "assistant"]
    save_screenshot(page, tmp_path, "serve_playground_chat.png")
    assert page.errors == []
