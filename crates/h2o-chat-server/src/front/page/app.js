// h2o-chat's web page: a chat-ui client speaking this server's own chat-ui routes
// (settings, create, streaming generate, stop-generating, rename, delete), as the original
// browser client did. No framework and no build step: the server embeds this file.
//
// Model output never becomes HTML: the Markdown renderer below builds DOM nodes and sets
// text with textContent, and the server's Content-Security-Policy forbids inline scripts.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "h2o-chat.apiKey";
  const PARAMS_STORAGE = "h2o-chat.params.";
  const PARAMETER_NAMES = ["temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "truncate", "seed"];
  // How long a stopped stream may take to close before the page drops it.
  const STOP_GRACE_MS = 5000;

  const state = {
    models: [],
    conversations: [],
    current: null, // {id, model, title, messages: [{from, content, id}]}
    busy: false,
    stopping: false,
    controller: null,
    lastFailed: null, // what Retry resends after an error
  };

  // Timings the benchmark reads: send → first token painted.
  const timings = { firstTokenPaintedMs: [] };

  // ---- HTTP ----------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  function storedKey() {
    try { return localStorage.getItem(KEY_STORAGE); } catch { return null; }
  }

  function uuid4() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  async function errorMessage(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && typeof body === "object") {
        for (const message of [body.message, body.error, body.error && body.error.message]) {
          if (typeof message === "string" && message) return message;
        }
      }
    } catch { /* not JSON */ }
    return text.trim().slice(0, 300) || response.statusText || "error";
  }

  // A request to the server; asks for the API key on 401 and for the welcome modal on 405.
  async function api(method, path, { json, form, signal, accept = "application/json" } = {}) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const headers = { Accept: accept };
      const key = storedKey();
      if (key) headers.Authorization = `Bearer ${key}`;
      let body;
      if (json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(json);
      } else if (form) {
        headers["Content-Type"] = "application/x-www-form-urlencoded";
        body = new URLSearchParams(form).toString();
      }
      const response = await fetch(path, { method, headers, body, signal, credentials: "same-origin" });
      if (response.status === 401) {
        await response.text().catch(() => "");
        if (!(await askForKey(Boolean(key)))) throw new HttpError(401, "An API key is needed.");
        continue;
      }
      if (response.status === 405 && path !== "settings") {
        await response.text().catch(() => "");
        if (!(await acceptWelcome())) throw new HttpError(405, "Accept the welcome note to chat.");
        continue;
      }
      if (!response.ok) {
        const retry = response.headers.get("Retry-After");
        throw new HttpError(response.status, await errorMessage(response), retry);
      }
      return response;
    }
    throw new HttpError(0, "The request was refused.");
  }

  function askForKey(refused) {
    const dialog = $("key-dialog");
    $("key-error").hidden = !refused;
    $("key-input").value = "";
    return new Promise((resolve) => {
      const done = (ok) => {
        $("key-ok").onclick = $("key-cancel").onclick = dialog.oncancel = null;
        dialog.close();
        resolve(ok);
      };
      $("key-ok").onclick = (event) => {
        event.preventDefault();
        const key = $("key-input").value.trim();
        if (!key) return;
        try { localStorage.setItem(KEY_STORAGE, key); } catch { /* private mode */ }
        done(true);
      };
      $("key-cancel").onclick = () => done(false);
      dialog.oncancel = () => done(false);
      dialog.showModal();
      $("key-input").focus();
    });
  }

  function acceptWelcome() {
    const dialog = $("ethics-dialog");
    return new Promise((resolve) => {
      const done = async (ok) => {
        $("ethics-ok").onclick = $("ethics-cancel").onclick = dialog.oncancel = null;
        dialog.close();
        if (!ok) return resolve(false);
        try {
          await api("POST", "settings", {
            form: {
              ethicsModalAccepted: "true",
              ethicsModalAcceptedAt: "",
              shareConversationsWithModelAuthors: "false",
              activeModel: selectedModel(),
            },
          });
          resolve(true);
        } catch (err) {
          showBanner(`The server did not take the welcome note: ${err.message}`);
          resolve(false);
        }
      };
      $("ethics-ok").onclick = (event) => { event.preventDefault(); done(true); };
      $("ethics-cancel").onclick = () => done(false);
      dialog.oncancel = () => done(false);
      dialog.showModal();
      $("ethics-ok").focus();
    });
  }

  // ---- Markdown, as DOM (never HTML) ----------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function safeHref(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  // Inline: `code`, **bold**, *italic* / _italic_, [text](http…); everything else is text.
  function inline(text) {
    const out = [];
    const pattern = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\*([^*\n]+)\*|(?<![\w])_([^_\n]+)_(?![\w])|\[([^\]\n]+)\]\(([^)\s]+)\)/g;
    let last = 0;
    for (const m of text.matchAll(pattern)) {
      if (m.index > last) out.push(text.slice(last, m.index));
      if (m[1] !== undefined) out.push(el("code", {}, m[1]));
      else if (m[2] !== undefined) out.push(el("strong", {}, ...inline(m[2])));
      else if (m[3] !== undefined) out.push(el("em", {}, ...inline(m[3])));
      else if (m[4] !== undefined) out.push(el("em", {}, ...inline(m[4])));
      else {
        const href = safeHref(m[6]);
        out.push(href ? el("a", { href, target: "_blank", rel: "noopener noreferrer" }, m[5]) : m[0]);
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  function withBreaks(lines) {
    const out = [];
    lines.forEach((line, i) => {
      if (i > 0) out.push(el("br"));
      out.push(...inline(line));
    });
    return out;
  }

  function codeBlock(code, language) {
    const codeNode = el("code", language ? { "data-language": language } : {}, code);
    const copy = el("button", { type: "button", class: "copy-code", "aria-label": "Copy the code" }, "Copy");
    copy.addEventListener("click", () => copyText(code, copy));
    return el("pre", {}, copy, codeNode);
  }

  // Blocks: fenced code, headings, lists, quotes, paragraphs. An unclosed fence (an answer
  // still streaming) is a code block to the end.
  function markdown(source) {
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const blocks = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/);
      if (fence) {
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++;
        blocks.push(codeBlock(body.join("\n"), fence[2]));
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        blocks.push(el(`h${Math.min(heading[1].length + 2, 6)}`, {}, ...inline(heading[2])));
        i++;
        continue;
      }
      const listItem = /^\s*(?:[-*+]|\d+[.)])\s+/;
      if (listItem.test(line)) {
        const ordered = /^\s*\d+[.)]\s+/.test(line);
        const list = el(ordered ? "ol" : "ul");
        while (i < lines.length && listItem.test(lines[i])) {
          list.append(el("li", {}, ...inline(lines[i].replace(listItem, ""))));
          i++;
        }
        blocks.push(list);
        continue;
      }
      if (/^\s*>/.test(line)) {
        const quoted = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
        blocks.push(el("blockquote", {}, ...withBreaks(quoted)));
        continue;
      }
      if (!line.trim()) {
        i++;
        continue;
      }
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(lines[i])) {
        paragraph.push(lines[i++]);
      }
      if (!paragraph.length) paragraph.push(lines[i++]);
      blocks.push(el("p", {}, ...withBreaks(paragraph)));
    }
    return blocks;
  }

  async function copyText(text, button) {
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // No clipboard permission (plain http on another host): select the text instead.
      const area = el("textarea", { class: "visually-hidden" });
      area.value = text;
      document.body.append(area);
      area.select();
      const copied = document.execCommand && document.execCommand("copy");
      area.remove();
      button.textContent = copied ? "Copied" : "Copy failed";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  // ---- Messages --------------------------------------------------------------

  function scrollToEnd() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  function messageView(message) {
    const body = el("div", { class: "body" });
    const view = el("article", { class: `message ${message.from}`, "data-id": message.id || "" }, body);
    if (message.from === "user") body.textContent = message.content;
    else body.replaceChildren(...markdown(message.content));
    if (message.from === "assistant") {
      const copy = el("button", { type: "button", class: "copy", "aria-label": "Copy the answer" }, "Copy");
      copy.addEventListener("click", () => copyText(view.dataset.text || "", copy));
      view.dataset.text = message.content;
      view.append(el("div", { class: "actions" }, copy));
    }
    return view;
  }

  function renderMessages() {
    const box = $("messages");
    const messages = state.current ? state.current.messages : [];
    $("welcome").hidden = messages.length > 0;
    box.replaceChildren($("welcome"), ...messages.map(messageView));
    addRetryToLastAnswer();
    scrollToEnd();
  }

  function addRetryToLastAnswer() {
    for (const old of document.querySelectorAll(".message .retry")) old.remove();
    if (state.busy || !state.current) return;
    const answers = document.querySelectorAll(".message.assistant");
    const last = answers[answers.length - 1];
    const messages = state.current.messages;
    if (!last || !messages.length || messages[messages.length - 1].from !== "assistant") return;
    const retry = el("button", { type: "button", class: "retry", "aria-label": "Generate the answer again" }, "Retry");
    retry.addEventListener("click", () => {
      const question = [...messages].reverse().find((m) => m.from === "user");
      if (question) send(question.content, { retryOf: question.id });
    });
    last.querySelector(".actions").append(retry);
  }

  // ---- Banner ----------------------------------------------------------------

  function showBanner(text, retry) {
    $("banner-text").textContent = text;
    $("banner-retry").hidden = !retry;
    $("banner").hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  function describe(err) {
    if (err instanceof HttpError) {
      if (err.status === 429) {
        const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : "";
        return `Too many requests: ${err.message}${wait}`;
      }
      if (err.status >= 500) return `The server failed (${err.status}): ${err.message}`;
      return err.status ? `${err.message} (${err.status})` : err.message;
    }
    return `The connection failed: ${err.message || err}`;
  }

  // ---- Models and settings ---------------------------------------------------

  function selectedModel() {
    return (state.current && state.current.model) || $("model").value;
  }

  function modelInfo(id) {
    return state.models.find((m) => m.id === id);
  }

  function defaultsFor(model) {
    const info = modelInfo(model);
    return Object.assign({}, info && info.parameters ? info.parameters : {});
  }

  function parametersFor(conversationId, model) {
    if (conversationId) {
      try {
        const saved = JSON.parse(localStorage.getItem(PARAMS_STORAGE + conversationId) || "null");
        if (saved && typeof saved === "object") return saved;
      } catch { /* unreadable: the defaults */ }
    }
    return pendingParameters || defaultsFor(model);
  }

  // Settings changed before the first message belong to the conversation it creates.
  let pendingParameters = null;

  function showParameters() {
    const params = parametersFor(state.current && state.current.id, selectedModel());
    for (const name of PARAMETER_NAMES) {
      const value = params[name];
      $(`p-${name}`).value = value === undefined || value === null ? "" : String(value);
    }
    $("p-do_sample").checked = Boolean(params.do_sample);
    $("settings-scope").textContent = state.current
      ? "These apply to this conversation."
      : "These apply to the next conversation.";
  }

  function readParameters() {
    const params = defaultsFor(selectedModel());
    for (const name of PARAMETER_NAMES) {
      const raw = $(`p-${name}`).value.trim();
      if (raw === "") {
        delete params[name];
        continue;
      }
      const number = Number(raw);
      if (!Number.isFinite(number)) continue;
      params[name] = ["top_k", "max_new_tokens", "truncate", "seed"].includes(name) ? Math.round(number) : number;
    }
    params.do_sample = $("p-do_sample").checked;
    params.return_full_text = false;
    return params;
  }

  function saveParameters() {
    const params = readParameters();
    if (state.current) {
      try { localStorage.setItem(PARAMS_STORAGE + state.current.id, JSON.stringify(params)); } catch { /* full */ }
    } else {
      pendingParameters = params;
    }
    $("settings-note").textContent = "Saved.";
  }

  // A model's name in the picker: stand-ins say who serves them, a model on demand that is
  // not in memory says its first answer waits for it to load.
  function modelLabel(m) {
    const label = m.stand_in ? `${m.id} (stand-in, served by ${m.served_by})` : m.id;
    return m.loaded === false ? `${label} (not loaded: loads on first use)` : label;
  }

  function fillModels(models) {
    state.models = models;
    const select = $("model");
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, modelLabel(m))));
    // The model that is really served comes first to hand: the page answers as the CLI does.
    const own = models.find((m) => !m.stand_in) || models[0];
    if (own) select.value = own.id;
  }

  // After an answer: which models are loaded now (the selection stays).
  async function refreshModels() {
    const response = await api("GET", "info");
    const info = await response.json();
    const models = info.served_models || [];
    state.models = models;
    for (const option of $("model").options) {
      const m = models.find((model) => model.id === option.value);
      if (m) option.textContent = modelLabel(m);
    }
  }

  // ---- Conversations ---------------------------------------------------------

  async function loadConversations() {
    const response = await api("GET", "conversations");
    const body = await response.json();
    state.conversations = body.conversations || [];
    renderConversations();
  }

  function renderConversations() {
    const list = $("conversations");
    list.replaceChildren(...state.conversations.map(conversationItem));
    $("no-conversations").hidden = state.conversations.length > 0;
  }

  function conversationItem(c) {
    const active = state.current && state.current.id === c.id;
    const open = el("button", { type: "button", class: "open", title: c.title }, c.title);
    if (active) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => openConversation(c.id));
    const rename = el("button", { type: "button", class: "icon rename", "aria-label": `Rename “${c.title}”` }, "✎");
    rename.addEventListener("click", () => startRename(item, c));
    const remove = el("button", { type: "button", class: "icon delete", "aria-label": `Delete “${c.title}”` }, "✕");
    remove.addEventListener("click", () => deleteConversation(c));
    const item = el("li", { class: active ? "active" : "", "data-id": c.id }, open, rename, remove);
    return item;
  }

  function startRename(item, c) {
    const input = el("input", { type: "text", maxlength: "100", "aria-label": "New title" });
    input.value = c.title;
    item.replaceChildren(input);
    input.focus();
    input.select();
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      if (save && title && title !== c.title) {
        try {
          await api("PATCH", `conversation/${c.id}`, { json: { title } });
          c.title = title;
        } catch (err) {
          showBanner(`Could not rename: ${describe(err)}`);
        }
      }
      renderConversations();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") { event.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function deleteConversation(c) {
    if (!confirm(`Delete “${c.title}”?`)) return;
    try {
      await api("DELETE", `conversation/${c.id}`);
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 404)) {
        showBanner(`Could not delete: ${describe(err)}`);
        return;
      }
    }
    try { localStorage.removeItem(PARAMS_STORAGE + c.id); } catch { /* fine */ }
    state.conversations = state.conversations.filter((x) => x.id !== c.id);
    if (state.current && state.current.id === c.id) newChat();
    renderConversations();
  }

  async function openConversation(id) {
    if (state.busy) return;
    hideBanner();
    try {
      const response = await api("GET", `conversation/${id}`);
      const c = await response.json();
      state.current = { id: c.id, model: c.model, title: c.title, messages: c.messages || [] };
      if (modelInfo(c.model)) $("model").value = c.model;
      $("model").disabled = true;
      history.replaceState(null, "", `#${c.id}`);
      renderMessages();
      renderConversations();
      showParameters();
      closeSidebar();
      $("prompt").focus();
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) {
        showBanner("That conversation is gone.");
        history.replaceState(null, "", location.pathname);
        await loadConversations().catch(() => {});
      } else {
        showBanner(describe(err));
      }
    }
  }

  function newChat() {
    if (state.busy) return;
    state.current = null;
    pendingParameters = null;
    $("model").disabled = false;
    history.replaceState(null, "", location.pathname);
    hideBanner();
    renderMessages();
    renderConversations();
    showParameters();
    closeSidebar();
    $("prompt").focus();
  }

  // ---- Generation --------------------------------------------------------------

  // Server-sent events from a fetch body: yields each event's parsed `data` JSON. Comments
  // (keep-alives) are skipped; the body is cancelled when the reader stops early.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
            .join("\n");
          if (data) yield JSON.parse(data);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("new-chat").disabled = busy;
    if (!busy) $("prompt").focus();
  }

  async function ensureConversation() {
    if (state.current) return state.current;
    const model = $("model").value;
    const response = await api("POST", "conversation", { json: { model } });
    const { conversationId } = await response.json();
    state.current = { id: conversationId, model, title: "", messages: [] };
    if (pendingParameters) {
      try { localStorage.setItem(PARAMS_STORAGE + conversationId, JSON.stringify(pendingParameters)); } catch { /* full */ }
      pendingParameters = null;
    }
    $("model").disabled = true;
    history.replaceState(null, "", `#${conversationId}`);
    return state.current;
  }

  async function send(text, { retryOf } = {}) {
    text = text.trim();
    if (!text || state.busy) return;
    hideBanner();
    setBusy(true);
    state.stopping = false;
    state.lastFailed = null;
    const started = performance.now();
    let conversation;
    try {
      conversation = await ensureConversation();
    } catch (err) {
      setBusy(false);
      showBanner(describe(err));
      return;
    }
    const messages = conversation.messages;
    if (retryOf) {
      const at = messages.findIndex((m) => m.id === retryOf);
      if (at >= 0) messages.splice(at);
    }
    const question = { from: "user", content: text, id: retryOf || uuid4() };
    const answer = { from: "assistant", content: "", id: "" };
    messages.push(question, answer);
    renderMessages();
    const views = document.querySelectorAll(".message.assistant");
    const view = views[views.length - 1];
    view.classList.add("streaming");
    const body = view.querySelector(".body");

    let painted = false;
    let scheduled = false;
    const paint = () => {
      scheduled = false;
      body.replaceChildren(...markdown(answer.content));
      view.dataset.text = answer.content;
      scrollToEnd();
      if (!painted && answer.content) {
        painted = true;
        timings.firstTokenPaintedMs.push(performance.now() - started);
      }
    };

    let outcome = "incomplete";
    let failure = null;
    let streaming = false;
    state.controller = new AbortController();
    try {
      const response = await api("POST", `conversation/${conversation.id}`, {
        signal: state.controller.signal,
        accept: "text/event-stream, application/json",
        json: {
          inputs: text,
          parameters: parametersFor(conversation.id, conversation.model),
          stream: true,
          options: { id: question.id, response_id: uuid4(), is_retry: Boolean(retryOf), use_cache: false, web_search_id: "" },
        },
      });
      streaming = true;
      for await (const event of events(response)) {
        if (event.error !== undefined) {
          failure = event.error;
          outcome = "error";
          break;
        }
        if (event.token && !event.token.special) {
          answer.content += event.token.text;
          if (!scheduled) {
            scheduled = true;
            requestAnimationFrame(paint);
          }
        }
        if (event.generated_text !== null && event.generated_text !== undefined) {
          outcome = "done";
          break;
        }
      }
      if (outcome === "incomplete" && state.stopping) outcome = "stopped";
    } catch (err) {
      if (state.stopping) outcome = "stopped";
      else {
        outcome = "error";
        failure = streaming
          ? `The answer was cut off: the connection dropped (${err.message || err}).`
          : describe(err);
      }
    }
    state.controller = null;
    paint();
    view.classList.remove("streaming");
    const status = el("div", { class: "status" });
    if (outcome === "stopped") {
      status.textContent = "Stopped.";
      view.append(status);
    } else if (outcome !== "done") {
      status.classList.add("error");
      status.textContent = failure || "The answer was cut off: the connection dropped before it finished.";
      view.append(status);
      state.lastFailed = { text, retryOf: question.id };
      showBanner(status.textContent, true);
    }
    if (!answer.content && outcome !== "done") {
      // Nothing was generated: the question stays, as the server has not stored it.
      messages.pop();
    }
    setBusy(false);
    addRetryToLastAnswer();
    await afterAnswer(conversation).catch(() => {});
    await refreshModels().catch(() => {});
  }

  // A new conversation is named after its first question (chat-ui's title).
  async function afterAnswer(conversation) {
    if (!conversation.title || /^Untitled \d+$/.test(conversation.title)) {
      const first = conversation.messages.find((m) => m.from === "user");
      if (first) {
        const title = first.content.replace(/\s+/g, " ").trim().slice(0, 60);
        await api("PATCH", `conversation/${conversation.id}`, { json: { title } });
        conversation.title = title;
      }
    }
    await loadConversations();
  }

  async function stop() {
    if (!state.busy || !state.current || state.stopping) return;
    state.stopping = true;
    const controller = state.controller;
    try {
      await api("POST", `conversation/${state.current.id}/stop-generating`);
    } catch { /* the abort below still ends it */ }
    // The server ends the stream after keeping the answer; drop it if it does not.
    setTimeout(() => { if (controller && state.controller === controller) controller.abort(); }, STOP_GRACE_MS);
  }

  // ---- Wiring ------------------------------------------------------------------

  function closeSidebar() {
    $("sidebar").classList.remove("open");
    $("open-sidebar").setAttribute("aria-expanded", "false");
  }

  function autosize() {
    const prompt = $("prompt");
    prompt.style.height = "auto";
    prompt.style.height = `${Math.min(prompt.scrollHeight, 192)}px`;
    prompt.style.overflowY = prompt.scrollHeight > 192 ? "auto" : "hidden";
  }

  function wire() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const prompt = $("prompt");
      const text = prompt.value;
      if (!text.trim() || state.busy) return;
      prompt.value = "";
      autosize();
      send(text);
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("prompt").addEventListener("input", autosize);
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", newChat);
    $("banner-close").addEventListener("click", hideBanner);
    $("banner-retry").addEventListener("click", () => {
      const failed = state.lastFailed;
      if (failed) send(failed.text, { retryOf: failed.retryOf });
    });
    $("settings-toggle").addEventListener("click", () => {
      const panel = $("settings");
      panel.hidden = !panel.hidden;
      $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) {
        showParameters();
        $("p-temperature").focus();
      }
    });
    $("settings").addEventListener("change", saveParameters);
    $("settings-reset").addEventListener("click", () => {
      if (state.current) {
        try { localStorage.removeItem(PARAMS_STORAGE + state.current.id); } catch { /* fine */ }
      }
      pendingParameters = null;
      showParameters();
      $("settings-note").textContent = "Model defaults.";
    });
    $("model").addEventListener("change", () => {
      pendingParameters = null;
      showParameters();
    });
    $("open-sidebar").addEventListener("click", () => {
      $("sidebar").classList.add("open");
      $("open-sidebar").setAttribute("aria-expanded", "true");
      $("new-chat").focus();
    });
    $("close-sidebar").addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.busy) {
        event.preventDefault();
        stop();
      } else if (event.key === "Escape") {
        closeSidebar();
      } else if (event.ctrlKey && event.shiftKey && (event.key === "O" || event.key === "o")) {
        event.preventDefault();
        newChat();
      }
    });
  }

  async function start() {
    wire();
    try {
      const response = await api("GET", "info");
      const info = await response.json();
      fillModels(info.served_models || []);
      $("server-version").textContent = info.version || "";
    } catch (err) {
      showBanner(`Cannot read the server's models: ${describe(err)}`);
    }
    showParameters();
    try {
      await loadConversations();
    } catch (err) {
      showBanner(describe(err));
    }
    const id = location.hash.slice(1);
    if (/^[0-9a-f]{24}$/.test(id)) await openConversation(id);
    document.documentElement.dataset.ready = "true";
  }

  // What the page's own tests and benchmark reach: the renderer and the timings.
  window.h2oChat = Object.freeze({ markdown, timings });

  start();
})();
