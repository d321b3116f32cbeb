"""The web page's figures (BENCHMARKS.md), in Debian's headless Chromium against the release
binary's `serve` with the real local model.

1. Page weight: what a first visit transfers (a fresh browser profile), as the browser's
   Resource Timing reports it: the document and its two assets, compressed on the wire and
   decoded, and the API calls the page makes before anyone types.
2. Time from "send" to the first token painted (the page's own `performance.now()` from the
   key press to the frame that shows the first text), beside the CLI's time from process
   start to the first answer byte on stdout, the same question against the same server,
   alternated, medians of 7.

    cargo build --release -p h2o-chat-cli
    H2O_CHAT_BIN=target/release/h2o-chat python3 crates/h2o-chat-cli/benches/page.py
"""

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "page"))
from test_page import BIN, QUESTION, Page, Serve, browser  # noqa: E402

ROUNDS = 7
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def page_weight(url):
    driver = browser()
    try:
        Page(driver, url)
        entries = driver.execute_script(
            "return [...performance.getEntriesByType('navigation'),"
            " ...performance.getEntriesByType('resource')]"
            ".map(e => ({name: e.name, transfer: e.transferSize, body: e.encodedBodySize,"
            " decoded: e.decodedBodySize}))")
    finally:
        driver.quit()
    print("first visit, a fresh profile (bytes):")
    print(f"  {'request':<40} {'transferred':>12} {'body on wire':>13} {'decoded':>9}")
    for e in entries:
        name = e["name"].replace(url, "/")
        print(f"  {name:<40} {e['transfer']:>12} {e['body']:>13} {e['decoded']:>9}")
    print(f"  {'total':<40} {sum(e['transfer'] for e in entries):>12}"
          f" {sum(e['body'] for e in entries):>13} {sum(e['decoded'] for e in entries):>9}")


def cli_first_byte(url):
    env = dict(os.environ, H2O_CHAT_NO_LOG="1")
    started = time.perf_counter()
    process = subprocess.Popen(
        [BIN, "-q", "--url", url, "--model", MODEL, "chat", QUESTION],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    first = process.stdout.read(1)
    elapsed = time.perf_counter() - started
    process.stdout.read()
    if process.wait(120) != 0 or not first:
        raise RuntimeError("the CLI did not answer")
    return elapsed * 1000


def first_token(url):
    driver = browser()
    page_ms, cli_ms = [], []
    try:
        page = Page(driver, url)
        for i in range(ROUNDS):
            page.find("#new-chat").click()
            page.ask(QUESTION, welcome=(i == 0))
            cli_ms.append(cli_first_byte(url.rstrip("/")))
        page_ms = driver.execute_script("return window.h2oChat.timings.firstTokenPaintedMs")
    finally:
        driver.quit()
    print(f"send to first token, median of {ROUNDS} (ms):")
    print(f"  page, key press to the first token painted: {statistics.median(page_ms):8.1f}"
          f"   (all: {', '.join(f'{v:.0f}' for v in page_ms)})")
    print(f"  CLI, process start to the first byte:       {statistics.median(cli_ms):8.1f}"
          f"   (all: {', '.join(f'{v:.0f}' for v in cli_ms)})")


def main():
    serve = Serve()
    try:
        page_weight(serve.url)
        first_token(serve.url)
    finally:
        serve.stop()


if __name__ == "__main__":
    main()
