"""The web page of `h2o-chat serve` in a real browser (Debian's headless Chromium, driven by
Selenium), against the real local model and a SQLite conversation store.

Run by `tests/page.rs` with H2O_CHAT_BIN (the binary) and SCREENSHOTS (where the main states
are kept as PNG). Each test is named after the rule it checks; every wait is for an event on
the page, bounded only so that a hang becomes a failure.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import unittest

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

BIN = os.environ["H2O_CHAT_BIN"]
# The local model's GGUF, served a second time under another name.
GGUF = os.environ["H2O_CHAT_TEST_GGUF"]
SCREENSHOTS = os.environ.get("SCREENSHOTS", tempfile.mkdtemp())
QUESTION = "What is the capital of France?"
# Bounds that only turn a hang into a failure.
LOAD_S = 120
ANSWER_S = 180


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`h2o-chat serve` on a loopback port, once its model is loaded."""

    def __init__(self, *args, port=None, db=None):
        self.port = port or free_port()
        self.db = db or os.path.join(tempfile.mkdtemp(), "serve.sqlite3")
        self.args = args
        self.process = subprocess.Popen(
            [BIN, "-q", "serve", "--addr", f"127.0.0.1:{self.port}", "--slots", "2",
             "--db", self.db, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        loaded = threading.Event()
        self.log = []

        def drain():
            for line in self.process.stderr:
                self.log.append(line)
                if "model loaded" in line:
                    loaded.set()
            loaded.set()

        threading.Thread(target=drain, daemon=True).start()
        if not loaded.wait(LOAD_S) or self.process.poll() is not None:
            raise RuntimeError("serve did not load its model:\n" + "".join(self.log))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)
        self.process.stderr.close()

    def restart(self):
        """The same server again: same port, same database."""
        self.stop()
        return Serve(*self.args, port=self.port, db=self.db)


def cli_answer(question):
    """What `h2o-chat chat` prints for `question` on the embedded model."""
    env = dict(os.environ, H2O_CHAT_NO_LOG="1")
    env.pop("H2O_CHAT_URL", None)
    out = subprocess.run([BIN, "-q", "chat", question], capture_output=True, text=True,
                         timeout=ANSWER_S, env=env, stdin=subprocess.DEVNULL, check=True)
    return out.stdout.strip()


def browser(width=1280, height=900, phone=False):
    options = webdriver.ChromeOptions()
    if phone:
        # A phone's viewport and touch, as Chromium's device emulation gives them (a headless
        # window cannot be narrower than 500 px).
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 3.0, "touch": True},
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                         "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
        })
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp()}",
                 f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(LOAD_S)
    driver.set_script_timeout(LOAD_S)
    return driver


class Page:
    """The page in one browser, with the steps a person takes."""

    def __init__(self, driver, url):
        self.d = driver
        self.url = url
        self.open()

    def open(self):
        self.d.get(self.url)
        self.wait(lambda d: d.execute_script("return document.documentElement.dataset.ready"))

    def wait(self, condition, seconds=LOAD_S):
        return WebDriverWait(self.d, seconds).until(condition)

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def shot(self, name):
        os.makedirs(SCREENSHOTS, exist_ok=True)
        self.d.save_screenshot(os.path.join(SCREENSHOTS, f"{name}.png"))

    def accept_welcome_if_asked(self):
        """Accepts the welcome modal if the server asks for it; returns as soon as the answer
        starts instead (a session that accepted it already is not asked again)."""
        def asked_or_answering(d):
            ok = d.find_elements(By.ID, "ethics-ok")
            if ok and ok[0].is_displayed() and ok[0].is_enabled():
                return ok[0]
            return bool(self.all(".message.streaming")) or self.find("#banner").is_displayed()
        try:
            found = WebDriverWait(self.d, 3).until(asked_or_answering)
            if found is not True:
                found.click()
        except TimeoutException:
            pass

    def type_and_send(self, text):
        box = self.find("#prompt")
        box.click()
        box.send_keys(text)
        box.send_keys(Keys.ENTER)

    def ask(self, text, welcome=True):
        """Sends `text` and waits for the answer to end; returns its text."""
        before = len(self.all(".message.assistant"))
        self.type_and_send(text)
        if welcome:
            self.accept_welcome_if_asked()
        self.wait(lambda d: len(self.all(".message.assistant")) > before
                  or self.find("#banner").is_displayed())
        return self.wait_for_end()

    def wait_for_end(self):
        self.wait(lambda d: self.find("#stop").get_attribute("hidden") is not None
                  and not self.all(".message.streaming"), ANSWER_S)
        answers = self.all(".message.assistant .body")
        return answers[-1].text if answers else None

    def current_id(self):
        return self.d.execute_script("return location.hash.slice(1)")

    def server_conversation(self, cid):
        """The stored conversation, read with the page's own session."""
        return self.d.execute_async_script(
            "const done = arguments[1];"
            "fetch('conversation/' + arguments[0], {headers: {Accept: 'application/json',"
            "  ...(localStorage.getItem('h2o-chat.apiKey') ? {Authorization: 'Bearer ' +"
            "  localStorage.getItem('h2o-chat.apiKey')} : {})}})"
            ".then(r => r.ok ? r.json() : {status: r.status}).then(done, e => done({error: String(e)}));",
            cid)

    def sidebar_titles(self):
        # Read in one script: the list is re-drawn whenever the page reloads it, and an
        # element found before a redraw is gone by the time its text is asked for.
        return self.d.execute_script(
            "return [...document.querySelectorAll('#conversations li .open')]"
            ".map(b => b.innerText)")

    def console_errors(self, allowed=()):
        entries = self.d.get_log("browser")
        return [e for e in entries if e["level"] == "SEVERE"
                and not any(a in e["message"] for a in allowed)]


class ThePage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.expected = cli_answer(QUESTION)
        cls.serve = Serve()
        cls.driver = browser()
        cls.page = Page(cls.driver, cls.serve.url)

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        cls.serve.stop()

    def setUp(self):
        self.page.open()
        self.page.find("#new-chat").click()
        # The welcome note's 405 is the protocol's way to ask for it (§a.6).
        self.expected_statuses = ["status of 405"]

    def tearDown(self):
        errors = self.page.console_errors(allowed=self.expected_statuses)
        self.assertEqual(errors, [], "no errors in the browser's console")

    def test_the_answer_streams_from_the_real_model_and_matches_the_cli(self):
        page = self.page
        self.assertIn("(stand-in, served by HuggingFaceTB/SmolLM2-135M-Instruct)",
                      page.find("#model").text, "stand-ins are marked")
        self.assertEqual(page.find("#model").get_attribute("value"),
                         "HuggingFaceTB/SmolLM2-135M-Instruct", "the real model is the default")
        answer = page.ask(QUESTION)
        page.shot("answer")
        self.assertFalse(page.find("#banner").is_displayed(), "no error shown")
        self.assertEqual(answer, self.expected, "the same question gets the CLI's answer")
        self.assertIn("Paris", answer)
        cid = page.current_id()
        page.wait(lambda d: QUESTION in page.sidebar_titles())
        stored = page.server_conversation(cid)
        self.assertEqual([m["from"] for m in stored["messages"]], ["user", "assistant"])
        self.assertEqual(stored["messages"][1]["content"], self.expected)
        timings = self.driver.execute_script("return window.h2oChat.timings.firstTokenPaintedMs")
        self.assertEqual(len(timings), 1, "the first token was painted once")

    def test_stop_ends_a_long_answer_and_keeps_it_as_far_as_it_went(self):
        page = self.page
        page.find("#settings-toggle").click()
        tokens = page.find("#p-max_new_tokens")
        tokens.clear()
        tokens.send_keys("1500", Keys.TAB)
        # Greedy with no repetition penalty, this model repeats itself to the length limit:
        # an answer long enough to be stopped on any machine.
        penalty = page.find("#p-repetition_penalty")
        penalty.clear()
        penalty.send_keys("1", Keys.TAB)
        page.find("#settings-toggle").click()
        page.type_and_send("Write the numbers 1 2 3 4 5 6 7 8 9 10 11 12 and continue to 1000.")
        page.accept_welcome_if_asked()
        page.wait(lambda d: len(page.find(".message.streaming .body").text) > 20)
        page.shot("streaming")
        # The keyboard stops it: Escape, as the Stop button's title says.
        page.find("body").send_keys(Keys.ESCAPE)
        page.wait(lambda d: "Stopped." in page.find(".message.assistant .status").text)
        kept = page.all(".message.assistant")[-1].get_attribute("data-text")
        page.shot("stopped")
        self.assertTrue(kept)
        stored = page.server_conversation(page.current_id())
        self.assertEqual(len(stored["messages"]), 2, stored)
        # What was stored is what was shown (the page may have painted a token less).
        self.assertTrue(stored["messages"][1]["content"].startswith(kept.strip()), stored)
        self.assertFalse(page.find("#prompt").get_attribute("disabled"))

    def test_retry_generates_the_last_answer_again_in_place(self):
        page = self.page
        first = page.ask(QUESTION)
        cid = page.current_id()
        page.find(".message.assistant .retry").click()
        page.wait(lambda d: page.all(".message.streaming") or not page.all(".retry"))
        again = page.wait_for_end()
        self.assertEqual(again, first, "greedy decoding: the same answer")
        self.assertEqual(len(page.all(".message")), 2, "the retry replaced the answer")
        stored = page.server_conversation(cid)
        self.assertEqual(len(stored["messages"]), 2, "is_retry cut the history: %s" % stored)

    def test_rename_and_delete_from_the_sidebar_last_on_the_server(self):
        page = self.page
        page.ask("Say hello.")
        cid = page.current_id()
        page.wait(lambda d: page.all(f'#conversations li[data-id="{cid}"] .open'))
        page.find(f'#conversations li[data-id="{cid}"] .rename').click()
        field = page.find("#conversations li input")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("Greetings <b>bold</b>", Keys.ENTER)
        page.wait(lambda d: "Greetings <b>bold</b>" in page.sidebar_titles())
        page.shot("renamed")
        page.open()
        self.assertIn("Greetings <b>bold</b>", page.sidebar_titles(), "the title is text, kept")
        page.find(f'#conversations li[data-id="{cid}"] .delete').click()
        page.wait(ec.alert_is_present()).accept()
        page.wait(lambda d: not page.all(f'#conversations li[data-id="{cid}"]'))
        page.open()
        self.assertFalse(page.all(f'#conversations li[data-id="{cid}"]'))
        self.expected_statuses.append("status of 404")
        self.assertEqual(page.server_conversation(cid).get("status"), 404)

    def test_a_reload_finds_the_conversation_and_its_messages_again(self):
        page = self.page
        answer = page.ask(QUESTION)
        cid = page.current_id()
        self.driver.get(self.serve.url)  # no #id: found through the sidebar
        page.wait(lambda d: d.execute_script("return document.documentElement.dataset.ready"))
        page.find(f'#conversations li[data-id="{cid}"] .open').click()
        page.wait(lambda d: len(page.all(".message")) == 2)
        self.assertEqual(page.all(".message.user")[0].text, QUESTION)
        self.assertEqual(page.all(".message.assistant .body")[0].text, answer)

    def test_markdown_from_the_model_is_rendered_without_html(self):
        rendered = self.driver.execute_script("""
            const box = document.createElement('div');
            box.append(...window.h2oChat.markdown(arguments[0]));
            document.body.append(box);
            const result = {
              img: box.querySelectorAll('img, script, iframe').length,
              strong: box.querySelectorAll('strong').length,
              code: box.querySelectorAll('pre code').length,
              links: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')),
              items: box.querySelectorAll('li').length,
              text: box.textContent,
            };
            box.remove();
            return result;
        """, "Hi <img src=x onerror=alert(1)> **bold** [ok](https://127.0.0.1/) "
             "[bad](javascript:alert(1))\n\n- one\n- two\n\n```html\n<script>alert(1)</script>\n```")
        self.assertEqual(rendered["img"], 0, "no element from the model's text")
        self.assertEqual(rendered["strong"], 1)
        self.assertEqual(rendered["code"], 1)
        self.assertEqual(rendered["items"], 2)
        self.assertEqual(rendered["links"], ["https://127.0.0.1/"], "only http(s) links")
        self.assertIn("<script>alert(1)</script>", rendered["text"], "shown as text")

    def test_the_keyboard_reaches_every_control(self):
        page = self.page
        seen = set()
        body = page.find("body")
        for _ in range(150):
            body.send_keys(Keys.TAB)
            seen.add(self.driver.execute_script(
                "return document.activeElement.id || document.activeElement.className"))
        for control in ["new-chat", "model", "settings-toggle", "prompt", "send"]:
            self.assertIn(control, seen)


class ThePageOnAPhone(unittest.TestCase):
    def test_a_phone_sized_viewport_works_without_errors(self):
        serve = Serve()
        driver = browser(390, 844, phone=True)
        try:
            page = Page(driver, serve.url)
            sidebar = page.find("#sidebar")
            self.assertLess(sidebar.rect["x"] + sidebar.rect["width"], 1, "the list is tucked away")
            page.find("#open-sidebar").click()
            page.wait(lambda d: sidebar.rect["x"] >= 0)
            page.shot("phone-sidebar")
            page.find("#close-sidebar").click()
            answer = page.ask(QUESTION)
            self.assertIn("Paris", answer)
            viewport = driver.execute_script("return window.innerWidth")
            self.assertEqual(viewport, 390)
            width = driver.execute_script("return document.documentElement.scrollWidth")
            self.assertLessEqual(width, viewport, "nothing wider than the screen")
            page.shot("phone")
            self.assertEqual(page.console_errors(allowed=["status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()


class ErrorsAndRecovery(unittest.TestCase):
    def test_a_rate_limit_is_shown_and_the_page_recovers(self):
        serve = Serve("--rate-limit", "0")
        driver = browser()
        try:
            page = Page(driver, serve.url)
            page.ask(QUESTION)
            page.type_and_send("And of Italy?")
            page.wait(lambda d: page.find("#banner").is_displayed())
            banner = page.find("#banner-text").text
            page.shot("rate-limited")
            self.assertIn("Too many requests", banner)
            self.assertIn("Try again in", banner, "Retry-After is shown")
            self.assertIsNotNone(page.find("#stop").get_attribute("hidden"), "not stuck busy")
            self.assertEqual(page.console_errors(allowed=["status of 429", "status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()

    def test_an_error_event_is_shown_and_the_page_recovers(self):
        serve = Serve()
        driver = browser()
        try:
            page = Page(driver, serve.url)
            page.find("#settings-toggle").click()
            field = page.find("#p-max_new_tokens")
            field.clear()
            field.send_keys("999999", Keys.TAB)
            page.type_and_send(QUESTION)
            page.accept_welcome_if_asked()
            page.wait(lambda d: page.find("#banner").is_displayed())
            self.assertIn("max_new_tokens", page.find("#banner-text").text)
            page.shot("error-event")
            page.find("#settings-reset").click()
            page.find("#banner-retry").click()
            answer = page.wait_for_end()
            self.assertIn("Paris", answer, "the retry with sane settings answers")
            self.assertEqual(page.console_errors(allowed=["status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()

    def test_a_dropped_stream_is_shown_and_a_restarted_server_continues_the_conversation(self):
        serve = Serve()
        driver = browser()
        try:
            page = Page(driver, serve.url)
            first = page.ask(QUESTION)
            cid = page.current_id()
            page.find("#settings-toggle").click()
            field = page.find("#p-max_new_tokens")
            field.clear()
            field.send_keys("1500", Keys.TAB)
            # Greedy with no repetition penalty: an answer long enough to be cut anywhere.
            penalty = page.find("#p-repetition_penalty")
            penalty.clear()
            penalty.send_keys("1", Keys.TAB)
            cut = "Write the numbers 1 2 3 4 5 6 7 8 9 10 11 12 and continue to 1000."
            page.type_and_send(cut)
            page.wait(lambda d: page.all(".message.streaming")
                      and len(page.find(".message.streaming .body").text) > 10)
            serve.stop(signal.SIGKILL)
            page.wait(lambda d: page.find("#banner").is_displayed())
            page.shot("dropped")
            self.assertIn("cut off", page.find(".message.assistant .status.error").text)
            serve = serve.restart()
            page.open()
            page.wait(lambda d: page.all(f'#conversations li[data-id="{cid}"]'))
            page.find(f'#conversations li[data-id="{cid}"] .open').click()
            # Turn 1 whole, and turn 2's question, stored before its answer streamed (a
            # killed process keeps nothing of the answer itself).
            page.wait(lambda d: len(page.all(".message")) == 3)
            self.assertEqual(page.all(".message.assistant .body")[0].text, first,
                             "turn 1 survived the restart")
            self.assertEqual(page.all(".message.user .body")[-1].text, cut)
            page.find("#settings-toggle").click()
            page.find("#settings-reset").click()
            page.find("#settings-toggle").click()
            second = page.ask("Thank you.")
            self.assertTrue(second)
            stored = page.server_conversation(cid)
            self.assertEqual([m["from"] for m in stored["messages"]],
                             ["user", "assistant", "user", "user", "assistant"], stored)
            page.shot("after-restart")
            self.assertEqual(page.console_errors(allowed=["ERR_", "network error", "Failed to fetch", "status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()


class SeveralModels(unittest.TestCase):
    def test_the_picker_offers_a_model_on_demand_which_loads_when_it_is_asked(self):
        serve = Serve("--gguf", f"second={GGUF}")
        driver = browser()
        try:
            page = Page(driver, serve.url)
            option = lambda: page.find('#model option[value="second"]')
            self.assertIn("not loaded", option().text, "a model on demand says so")
            self.assertEqual(page.find("#model").get_attribute("value"),
                             "HuggingFaceTB/SmolLM2-135M-Instruct", "the default comes first")
            Select(page.find("#model")).select_by_value("second")
            self.assertIn("Paris", page.ask(QUESTION))
            page.wait(lambda d: "not loaded" not in option().text)
            self.assertEqual(page.find("#model").get_attribute("value"), "second")
            cid = page.current_id()
            self.assertEqual(page.server_conversation(cid)["model"], "second",
                             "the conversation is the chosen model's")
            page.shot("second-model")
            self.assertEqual(page.console_errors(allowed=["status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()


class AnApiKey(unittest.TestCase):
    def test_the_page_asks_for_the_key_once_and_sends_it_as_bearer(self):
        serve = Serve("--api-key", "page-secret")
        driver = browser()
        try:
            driver.get(serve.url)
            page = Page.__new__(Page)
            page.d, page.url = driver, serve.url
            key = page.wait(ec.visibility_of_element_located((By.ID, "key-input")))
            key.send_keys("wrong", Keys.ENTER)
            page.wait(lambda d: page.find("#key-error").is_displayed())
            key = page.find("#key-input")
            key.clear()
            key.send_keys("page-secret", Keys.ENTER)
            page.wait(lambda d: d.execute_script("return document.documentElement.dataset.ready"))
            self.assertIn("Paris", page.ask(QUESTION))
            page.open()  # a reload does not ask again
            self.assertFalse(page.find("#key-dialog").is_displayed())
            self.assertEqual(page.console_errors(allowed=["status of 401", "status of 405"]), [])
        finally:
            driver.quit()
            serve.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
