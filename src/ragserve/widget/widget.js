/* ragserve chat widget — one <script> tag gives any page a chat bubble.
 *
 *   <script src="https://host/widget.js" data-server="https://host" data-title="Ask the docs"
 *           data-greeting="Hi! Ask me about…" data-accent="#2563eb" data-position="right" defer></script>
 *
 * Plain JavaScript, no dependencies, no build step. Safety: nothing from the server (model
 * output or document text) is ever assigned to innerHTML; the small Markdown renderer below
 * builds DOM nodes and sets textContent only, so planted HTML shows as text.
 */
(() => {
  "use strict";
  const script = document.currentScript || document.querySelector("script[src*='widget.js']");
  const cfg = {
    server: (script && script.dataset.server) || (script ? new URL(script.src, location.href).origin : location.origin),
    title: (script && script.dataset.title) || "Ask the docs",
    greeting: (script && script.dataset.greeting) || "Hi! Ask me anything about these documents.",
    accent: (script && script.dataset.accent) || "#2563eb",
    position: (script && script.dataset.position) === "left" ? "left" : "right",
  };
  const STORE_KEY = "ragserve-chat:" + cfg.server;
  const REFUSAL = "I couldn't find that in the documents.";

  const host = document.createElement("div");
  host.id = "ragserve-widget";
  document.body.appendChild(host);
  const root = host.attachShadow({ mode: "open" });
  const css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = cfg.server.replace(/\/$/, "") + "/widget.css";
  root.appendChild(css);

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c) node.appendChild(c);
    return node;
  };

  const wrap = el("div", { class: "rs-wrap rs-" + cfg.position });
  wrap.style.setProperty("--rs-accent", cfg.accent);
  const bubble = el("button", { class: "rs-bubble", "aria-label": "Open chat: " + cfg.title, "aria-expanded": "false", "aria-controls": "rs-dialog" });
  // An inline SVG icon: emoji fonts are missing on many systems (and in headless browsers).
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("width", "26");
  svg.setAttribute("height", "26");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z");
  path.setAttribute("fill", "currentColor");
  svg.appendChild(path);
  bubble.appendChild(svg);
  const panel = el("div", { class: "rs-panel", id: "rs-dialog", role: "dialog", "aria-modal": "true", "aria-label": cfg.title, hidden: "" });
  const closeBtn = el("button", { class: "rs-close", "aria-label": "Close chat", text: "×" });
  const header = el("div", { class: "rs-header" }, el("h2", { text: cfg.title }), closeBtn);
  const log = el("div", { class: "rs-log", role: "log", "aria-live": "polite", "aria-relevant": "additions" });
  const input = el("textarea", { class: "rs-input", rows: "1", placeholder: "Ask a question…", "aria-label": "Your question" });
  const send = el("button", { class: "rs-send", type: "submit", text: "Send" });
  const stop = el("button", { class: "rs-stop", type: "button", text: "Stop", hidden: "" });
  const form = el("form", { class: "rs-form" }, input, send, stop);
  panel.append(header, log, form);
  wrap.append(panel, bubble);
  root.appendChild(wrap);

  /** @type {{role: string, content: string}[]} */
  let history = [];
  try { history = JSON.parse(sessionStorage.getItem(STORE_KEY) || "[]"); } catch { history = []; }
  let controller = null;

  // ---- safe Markdown: paragraphs, lists, code, **bold**, *italic*, `code`, [n] citations ----
  function renderInline(parent, text) {
    const re = /(\*\*[^*]+\*\*|`[^`]+`|\*[^*\s][^*]*\*|\[\d+\])/g;
    let last = 0, m;
    while ((m = re.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      const tok = m[0];
      if (tok.startsWith("**")) parent.appendChild(el("strong", { text: tok.slice(2, -2) }));
      else if (tok.startsWith("`")) parent.appendChild(el("code", { text: tok.slice(1, -1) }));
      else if (tok.startsWith("[")) parent.appendChild(el("sup", { class: "rs-cite", text: tok }));
      else parent.appendChild(el("em", { text: tok.slice(1, -1) }));
      last = m.index + tok.length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }
  function renderMarkdown(target, md) {
    target.replaceChildren();
    const blocks = md.split(/```/);
    blocks.forEach((block, i) => {
      if (i % 2 === 1) { target.appendChild(el("pre", {}, el("code", { text: block.replace(/^\w*\n/, "") }))); return; }
      for (const para of block.split(/\n{2,}/)) {
        const lines = para.split("\n").filter((l) => l.trim());
        if (!lines.length) continue;
        if (lines.every((l) => /^\s*([-*]|\d+\.)\s+/.test(l))) {
          const list = el(/^\s*\d+\./.test(lines[0]) ? "ol" : "ul");
          for (const l of lines) { const li = el("li"); renderInline(li, l.replace(/^\s*([-*]|\d+\.)\s+/, "")); list.appendChild(li); }
          target.appendChild(list);
        } else {
          const p = el("p"); renderInline(p, lines.join(" ")); target.appendChild(p);
        }
      }
    });
  }

  function addMessage(role, text) {
    const body = el("div", { class: "rs-body" });
    const msg = el("div", { class: "rs-msg rs-" + role }, body);
    if (role === "assistant") renderMarkdown(body, text); else body.textContent = text;
    log.appendChild(msg);
    log.scrollTop = log.scrollHeight;
    return msg;
  }

  function addSources(msg, sources, citations) {
    if (!sources || !sources.length) return;
    const cited = new Set((citations || []).map((c) => c.number));
    const spans = new Map((citations || []).map((c) => [c.number, c.span]));
    const list = el("ol", { class: "rs-sources", "aria-label": "Sources" });
    sources.forEach((s, i) => {
      const n = i + 1;
      if (cited.size && !cited.has(n)) return;
      const where = s.page ? `p. ${s.page}` : (s.section || "");
      const detail = el("div", { class: "rs-source-text", hidden: "" });
      detail.textContent = spans.get(n) || s.text;
      const btn = el("button", { class: "rs-source", type: "button", "aria-expanded": "false" });
      btn.append(el("span", { class: "rs-num", text: `[${n}]` }), el("span", { class: "rs-file", text: " " + s.source }));
      if (where) btn.append(el("span", { class: "rs-where", text: " · " + where }));
      btn.addEventListener("click", () => {
        const open = detail.hidden;
        detail.hidden = !open;
        btn.setAttribute("aria-expanded", String(open));
      });
      list.appendChild(el("li", {}, btn, detail));
    });
    if (list.children.length) msg.appendChild(list);
  }

  function showError(msg, text, retry) {
    msg.classList.add("rs-error");
    const body = msg.querySelector(".rs-body");
    body.replaceChildren(el("p", { text }));
    const again = el("button", { class: "rs-retry", type: "button", text: "Retry" });
    again.addEventListener("click", () => { msg.remove(); retry(); });
    body.appendChild(again);
  }

  async function ask(question, priorHistory) {
    const msg = addMessage("assistant", "");
    msg.classList.add("rs-pending");
    const body = msg.querySelector(".rs-body");
    controller = new AbortController();
    const timer = setTimeout(() => controller && controller.abort("timeout"), 90000);
    send.hidden = true; stop.hidden = false;
    let answer = "", done = null;
    const retry = () => ask(question, priorHistory);
    try {
      const res = await fetch(cfg.server.replace(/\/$/, "") + "/chat", {
        method: "POST",
        headers: { "content-type": "application/json", accept: "text/event-stream" },
        body: JSON.stringify({ query: question, history: priorHistory, stream: true }),
        signal: controller.signal,
      });
      if (!res.ok) {
        let message = `The server answered ${res.status}.`;
        try { const j = await res.json(); if (j && j.message) message = j.message; } catch { /* not JSON */ }
        if (res.status === 429) message = "Too many questions at once. " + message;
        showError(msg, message, retry);
        return;
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done: finished } = await reader.read();
        if (finished) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const raw = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          let event = "message", data = "";
          for (const line of raw.split(/\r?\n/)) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue;
          let payload;
          try { payload = JSON.parse(data); } catch { continue; }
          if (event === "token") {
            answer += payload.text;
            msg.classList.remove("rs-pending");
            renderMarkdown(body, answer);
            log.scrollTop = log.scrollHeight;
          } else if (event === "done") {
            done = payload;
          } else if (event === "error") {
            showError(msg, payload.message || "The answer failed.", retry);
            return;
          }
        }
      }
      if (!done) { showError(msg, "The connection closed before the answer finished.", retry); return; }
      msg.classList.remove("rs-pending");
      renderMarkdown(body, done.answer);
      if (done.refused || done.answer === REFUSAL) msg.classList.add("rs-refused");
      else addSources(msg, done.sources, done.citations);
      history = [...priorHistory, { role: "user", content: question }, { role: "assistant", content: done.answer }].slice(-20);
      sessionStorage.setItem(STORE_KEY, JSON.stringify(history));
    } catch (err) {
      if (controller && controller.signal.aborted && controller.signal.reason !== "timeout") {
        msg.classList.remove("rs-pending");
        if (!answer) msg.remove(); else msg.appendChild(el("p", { class: "rs-note", text: "(stopped)" }));
      } else {
        showError(msg, controller && controller.signal.reason === "timeout"
          ? "The server is taking too long to answer." : "Cannot reach the server. Check your connection.", retry);
      }
    } finally {
      clearTimeout(timer);
      controller = null;
      send.hidden = false; stop.hidden = true;
    }
  }

  function openPanel() {
    panel.hidden = false;
    bubble.setAttribute("aria-expanded", "true");
    if (!log.children.length) {
      addMessage("assistant", cfg.greeting).classList.add("rs-greeting");
      for (const m of history) addMessage(m.role, m.content);
    }
    input.focus();
  }
  function closePanel() {
    panel.hidden = true;
    bubble.setAttribute("aria-expanded", "false");
    bubble.focus();
  }

  bubble.addEventListener("click", () => (panel.hidden ? openPanel() : closePanel()));
  closeBtn.addEventListener("click", closePanel);
  stop.addEventListener("click", () => controller && controller.abort("stopped"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = input.value.trim();
    if (!q || controller) return;
    input.value = "";
    addMessage("user", q);
    ask(q, history.slice());
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); closePanel(); return; }
    if (e.key !== "Tab") return;
    const focusable = [...panel.querySelectorAll("button:not([hidden]), textarea, [tabindex='0']")].filter((n) => !n.closest("[hidden]"));
    if (!focusable.length) return;
    const first = focusable[0], last = focusable[focusable.length - 1];
    const active = root.activeElement;
    if (e.shiftKey && active === first) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && active === last) { e.preventDefault(); first.focus(); }
  });
  window.ragserveWidget = { open: openPanel, close: closePanel, root };
})();
