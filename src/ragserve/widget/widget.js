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

  // ---- safe Markdown ----
  // A small renderer of our own rather than a library: the widget is one dependency-free file
  // served as is (no npm, no build step), and the answers need only a handful of constructs.
  // Model output and document text are untrusted, so it never touches innerHTML: it builds
  // elements from a fixed set of tags and sets textContent, and the only attribute taken from
  // the text is a link's href, kept only when it parses as an absolute http(s) URL.
  const SAFE_PROTOCOLS = new Set(["http:", "https:"]);
  function safeUrl(raw) {
    try {
      const url = new URL(raw.replace(/^<|>$/g, ""));
      return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
    } catch { return null; }
  }
  // Nesting deeper than this is flattened to text, so a hostile answer ("> > > …", "*_*_*_…")
  // cannot exhaust the stack.
  const MAX_DEPTH = 8;
  function link(href, label, ctx) {
    const a = el("a", { href, target: "_blank", rel: "noopener noreferrer" });
    renderInline(a, label, { inLink: true, depth: ctx.depth + 1 });
    return a;
  }

  // Inline rules, tried in this order at each position; the earliest match wins.
  const INLINE = [
    { re: /\\([\\`*_[\]()#+\-.!<>~|])/y, make: (m) => document.createTextNode(m[1]) },
    { re: /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/y, make: (m) => el("code", { text: m[2].trim() || m[2] }) },
    {
      re: /\[([^\]\n]+)\]\(\s*(<[^>\n]*>|(?:[^()\s]|\([^()\s]*\))+)(?:\s+"[^"\n]*")?\s*\)/y,
      make: (m, ctx) => {
        const href = safeUrl(m[2]);
        return href && !ctx.inLink ? link(href, m[1], ctx) : inner("span", m[1], ctx);
      },
    },
    { re: /\[(\d{1,3})\]/y, make: (m) => el("sup", { class: "rs-cite", "data-n": m[1], text: m[0] }) },
    { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/y, make: (m, ctx) => inner("strong", m[1], ctx) },
    // Underscores only pair at word edges, so snake_case and "window.__name" stay as written.
    { re: /(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)/y, make: (m, ctx) => inner("strong", m[1], ctx) },
    { re: /\*(?=[^\s*])([\s\S]*?[^\s*])\*/y, make: (m, ctx) => inner("em", m[1], ctx) },
    { re: /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/y, make: (m, ctx) => inner("em", m[1], ctx) },
    { re: /~~(?=\S)([\s\S]*?\S)~~/y, make: (m, ctx) => inner("del", m[1], ctx) },
    {
      re: /https?:\/\/[^\s<>"]*[^\s<>".,;:!?)\]'*_]/y,
      make: (m, ctx) => {
        const href = !ctx.inLink && safeUrl(m[0]);
        return href ? link(href, m[0], ctx) : document.createTextNode(m[0]);
      },
    },
  ];
  const INLINE_START = /[\\`[*_~h]/g;
  function inner(tag, text, ctx = TOP) {
    const node = el(tag);
    renderInline(node, text, { inLink: ctx.inLink, depth: ctx.depth + 1 });
    return node;
  }
  const TOP = { inLink: false, depth: 0 };

  function renderInline(parent, text, ctx = TOP) {
    if (ctx.depth > MAX_DEPTH) { parent.appendChild(document.createTextNode(text)); return; }
    let plain = 0;
    INLINE_START.lastIndex = 0;
    let m;
    while ((m = INLINE_START.exec(text))) {
      const at = m.index;
      let node = null, end = at;
      for (const rule of INLINE) {
        rule.re.lastIndex = at;
        const hit = rule.re.exec(text);
        if (hit) { node = rule.make(hit, ctx); end = at + hit[0].length; break; }
      }
      if (!node) continue;
      if (at > plain) parent.appendChild(document.createTextNode(text.slice(plain, at)));
      parent.appendChild(node);
      plain = end;
      INLINE_START.lastIndex = end;
    }
    if (plain < text.length) parent.appendChild(document.createTextNode(text.slice(plain)));
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)/;
  const BULLET = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;

  // Blocks: fenced code, headings, quotes, lists and paragraphs. An unclosed fence runs to the
  // end, so a code block streams in as code rather than as a paragraph that later jumps.
  function renderMarkdown(target, md, depth = 0) {
    target.replaceChildren();
    const lines = md.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) { i++; continue; }
      if ((m = FENCE.exec(line))) {
        const close = new RegExp("^ {0,3}" + m[1][0] + "{" + m[1].length + ",}\\s*$");
        const body = [];
        for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
        if (i >= lines.length && body.length && !body[body.length - 1].trim()) body.pop();  // still streaming
        i++;
        const code = el("code", { text: body.join("\n") });
        if (m[2]) code.className = "language-" + m[2];
        target.appendChild(el("pre", {}, code));
      } else if ((m = HEADING.exec(line))) {
        target.appendChild(inner("h" + Math.min(6, m[1].length + 2), m[2]));
        i++;
      } else if (/^\s*>/.test(line) && depth < MAX_DEPTH) {
        const quoted = [];
        for (; i < lines.length && /^\s*>/.test(lines[i]); i++) quoted.push(lines[i].replace(/^\s*>\s?/, ""));
        const quote = el("blockquote");
        renderMarkdown(quote, quoted.join("\n"), depth + 1);
        target.appendChild(quote);
      } else if (BULLET.test(line)) {
        i = renderList(target, lines, i, depth);
      } else {
        const para = [line.trim()];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) para.push(lines[i].trim());
        target.appendChild(inner("p", para.join(" ")));
      }
    }
  }
  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || /^\s*>/.test(line);
  }

  // A list runs while lines are its items, deeper items (a nested list) or continuation text.
  function renderList(target, lines, i, depth) {
    const first = BULLET.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const list = el(ordered ? "ol" : "ul");
    const start = parseInt(first[2], 10);
    if (ordered && start !== 1) list.setAttribute("start", String(start));
    let li = null, text = [];
    const flush = () => { if (li && text.length) li.appendChild(inner("span", text.join(" "))); text = []; };
    while (i < lines.length) {
      const line = lines[i];
      const m = BULLET.exec(line);
      if (m && m[1].length < indent) break;
      if (m && (m[1].length <= indent + 1 || depth >= MAX_DEPTH)) {
        if (/\d/.test(m[2]) !== ordered) break;
        flush();
        li = list.appendChild(el("li"));
        text = [m[3]];
        i++;
      } else if (m) {
        flush();
        i = renderList(li, lines, i, depth + 1);
      } else if (line.trim() && !startsBlock(line)) {
        text.push(line.trim());
        i++;
      } else if (!line.trim() && BULLET.test(lines[i + 1] || "")) {
        i++;  // a blank line between items: a loose list, still one list
      } else break;
    }
    flush();
    target.appendChild(list);
    return i;
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
      list.appendChild(el("li", { "data-n": String(n) }, btn, detail));
    });
    if (list.children.length) msg.appendChild(list);
  }

  // A citation in the answer opens the source it names, in the same message's sources list.
  log.addEventListener("click", (e) => {
    const cite = e.target.closest && e.target.closest(".rs-cite");
    const msg = cite && cite.closest(".rs-msg");
    const btn = msg && msg.querySelector(`.rs-sources li[data-n="${cite.dataset.n}"] .rs-source`);
    if (!btn) return;
    if (btn.getAttribute("aria-expanded") !== "true") btn.click();
    btn.focus();
  });

  // What the reply is decides how it looks: a question back is not a refusal, and a
  // small-talk reply or a question back has no sources to list.
  function replyKind(done) {
    if (done.kind) return done.kind;
    return done.refused || done.answer === REFUSAL ? "refusal" : "answer";  // an older server
  }
  function showKind(msg, done) {
    const kind = replyKind(done);
    msg.dataset.kind = kind;
    if (kind === "refusal") msg.classList.add("rs-refused");
    else if (kind === "clarify") msg.classList.add("rs-clarify");
    else if (kind === "reply") msg.classList.add("rs-reply");
    else addSources(msg, done.sources, done.citations);
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
    // An idle timeout, re-armed by every byte (the server pings every 15 s): a slow answer on a
    // busy CPU still arrives, a server gone silent is given up on.
    let timer = null;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller && controller.abort("timeout"), 90000);
    };
    arm();
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
        arm();
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
      // The tokens were verified text only; the final answer extends them (citation markers,
      // a code block), so replacing the bubble never takes back what was read.
      renderMarkdown(body, done.answer);
      showKind(msg, done);
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
