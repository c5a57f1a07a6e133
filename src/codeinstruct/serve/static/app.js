// The playground: an instruction (and optional input) -> /v1/chat/completions, streamed; the
// answer rendered with its code highlighted; the attribution of the finished answer beside it.
// No build step and no external assets: plain DOM, fetch and a small highlighter.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { controller: null, authRequired: false };

// ------------------------------------------------------------------ highlighting

const HASH_COMMENT = new Set(["", "python", "py", "sh", "bash", "shell", "ruby", "rb", "r", "yaml", "yml", "toml", "perl"]);
const KEYWORDS = new Set((
  // Python
  "False None True and as assert async await break class continue def del elif else except finally for from " +
  "global if import in is lambda nonlocal not or pass raise return try while with yield match case self " +
  // C family, JavaScript, Java, Go, Rust
  "auto bool char const default do double enum extern float goto int long register short signed sizeof static " +
  "struct switch typedef union unsigned void volatile catch delete export extends function let new null " +
  "this throw typeof var instanceof super true false undefined package private protected public interface " +
  "implements final abstract boolean byte throws func go chan defer map range select type fn impl mut pub " +
  "use mod trait where loop move ref crate dyn struct namespace template typename using virtual override"
).split(" "));

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function tokenPattern(lang) {
  const comment = HASH_COMMENT.has(lang) ? String.raw`#[^\n]*` : String.raw`\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`;
  const strings = [
    String.raw`"""[\s\S]*?(?:"""|$)`, String.raw`'''[\s\S]*?(?:'''|$)`,
    String.raw`"(?:\\.|[^"\\\n])*"?`, String.raw`'(?:\\.|[^'\\\n])*'?`, String.raw`\`(?:\\.|[^\`\\])*\`?`,
  ].join("|");
  return new RegExp(
    `(${comment})|(${strings})|(\\b(?:0[xX][0-9a-fA-F_]+|\\d[\\d_]*(?:\\.\\d+)?(?:[eE][+-]?\\d+)?)\\b)` +
    String.raw`|(@[A-Za-z_][\w.]*)|([A-Za-z_$][\w$]*)(?=\s*\()|([A-Za-z_$][\w$]*)`, "g");
}

function highlight(code, lang) {
  const pattern = tokenPattern(lang);
  let out = "", last = 0, m;
  while ((m = pattern.exec(code)) !== null) {
    if (m[0] === "") { pattern.lastIndex++; continue; }
    out += escapeHtml(code.slice(last, m.index));
    const text = escapeHtml(m[0]);
    if (m[1]) out += `<span class="tok-com">${text}</span>`;
    else if (m[2]) out += `<span class="tok-str">${text}</span>`;
    else if (m[3]) out += `<span class="tok-num">${text}</span>`;
    else if (m[4]) out += HASH_COMMENT.has(lang) ? `<span class="tok-deco">${text}</span>` : text;
    else if (m[5]) out += KEYWORDS.has(m[5]) ? `<span class="tok-kw">${text}</span>` : `<span class="tok-fn">${text}</span>`;
    else out += KEYWORDS.has(m[6]) ? `<span class="tok-kw">${text}</span>` : text;
    last = m.index + m[0].length;
  }
  return out + escapeHtml(code.slice(last));
}

// Markdown's fenced blocks are code; an answer without fences that looks like code is code too.
function render(text) {
  const parts = [];
  const lines = text.split("\n");
  let prose = [], code = null, lang = "";
  const flushProse = () => {
    const body = prose.join("\n").replace(/^\n+|\n+$/g, "");
    if (body) parts.push(looksLikeCode(body) ? codeBlock(body, "") : `<p class="prose">${escapeHtml(body)}</p>`);
    prose = [];
  };
  for (const line of lines) {
    const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
    if (fence && code === null) { flushProse(); code = []; lang = fence[1].toLowerCase(); continue; }
    if (fence && code !== null) { parts.push(codeBlock(code.join("\n"), lang)); code = null; continue; }
    (code === null ? prose : code).push(line);
  }
  if (code !== null) parts.push(codeBlock(code.join("\n"), lang));  // still streaming
  flushProse();
  return parts.join("");
}

function looksLikeCode(text) {
  return /^\s*(def |class |import |from \S+ import |function |const |let |#include|public |fn |package )/m.test(text);
}

function codeBlock(code, lang) {
  const label = lang ? `<span class="lang">${escapeHtml(lang)}</span>` : "";
  return `<pre>${label}<code>${highlight(code, lang)}</code></pre>`;
}

// ------------------------------------------------------------------ attribution

function showAttribution(attribution) {
  const matches = $("matches"), licenses = $("licenses"), note = $("attribution-note");
  matches.innerHTML = "";
  licenses.innerHTML = "";
  if (!attribution) {
    note.textContent = "Attribution is off: start the server with --attribution-index INDEX.";
    return;
  }
  if (attribution.error) {
    note.textContent = `Attribution failed: ${attribution.error}`;
    return;
  }
  note.textContent = attribution.matches.length
    ? `${attribution.matches.length} span(s) of the answer found in the index:`
    : "No span of the answer was found in the index.";
  for (const [name, count] of Object.entries(attribution.licenses || {})) {
    const chip = document.createElement("span");
    chip.className = "license" + (name === "unknown" ? " unknown" : "");
    chip.textContent = `${name} × ${count}`;
    licenses.appendChild(chip);
  }
  for (const m of attribution.matches) {
    const li = document.createElement("li");
    li.className = "match";
    const where = document.createElement("div");
    where.className = "where";
    where.textContent = `${m.repo} ${m.path}:${m.source_lines[0]}-${m.source_lines[1]}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    const license = document.createElement("span");
    license.className = "license" + (m.license ? "" : " unknown");
    license.textContent = m.license || "license unknown";
    meta.append(license, ` ${m.kind}, ${m.tokens} tokens, answer lines ${m.query_lines[0]}-${m.query_lines[1]}` +
      (m.copies > 1 ? `, ${m.copies} copies` : ""));
    li.append(where, meta);
    matches.appendChild(li);
  }
}

// ------------------------------------------------------------------ streaming

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

async function generate(event) {
  event.preventDefault();
  const instruction = $("instruction").value;
  const input = $("input").value;
  const messages = input.trim() ? [{ role: "system", content: input }] : [];
  messages.push({ role: "user", content: instruction });
  const body = {
    messages, stream: true,
    max_tokens: Number($("max-tokens").value) || 256,
    temperature: Number($("temperature").value) || 0,
  };
  const answer = $("answer");
  answer.innerHTML = "";
  $("error").hidden = true;
  $("matches").innerHTML = "";
  $("licenses").innerHTML = "";
  $("attribution-note").textContent = "Checking once the answer is done…";
  $("send").disabled = true;
  $("stop").disabled = false;
  answer.classList.add("streaming");
  state.controller = new AbortController();
  let text = "", chunks = 0, pending = false;
  const paint = () => { pending = false; answer.innerHTML = render(text); };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => null);
      throw new Error(err && err.error ? err.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");  // {stream: true} below: a character split across reads waits
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = raw.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data || data === "[DONE]") continue;
        const message = JSON.parse(data);
        if (message.error) throw new Error(message.error.message);
        for (const choice of message.choices || []) {
          if (choice.delta && choice.delta.content) {
            text += choice.delta.content;
            chunks += 1;
            $("counter").textContent = `${chunks} chunks`;
            if (!pending) { pending = true; requestAnimationFrame(paint); }
          }
          if (choice.finish_reason) {
            $("counter").textContent = `${chunks} chunks, finished: ${choice.finish_reason}`;
            showAttribution(choice.attribution || null);
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") $("attribution-note").textContent = "Stopped.";
    else showError(e.message);
  } finally {
    paint();
    if (!text) answer.innerHTML = '<p class="placeholder">(empty answer)</p>';
    answer.classList.remove("streaming");
    $("send").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

async function loadStatus() {
  try {
    const health = await (await fetch("/health")).json();
    $("model").textContent = health.model || (health.upstream ? `proxy → ${health.upstream}` : "");
    $("server-status").textContent = `${health.mode}; ${health.attribution ? "attribution on" : "attribution off"}`;
    $("key-label").hidden = !health.auth;
    if (!health.attribution) {
      $("attribution-note").textContent = "Attribution is off: start the server with --attribution-index INDEX.";
    }
  } catch (e) {
    $("server-status").textContent = "server unreachable";
  }
}

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("instruction").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
});
loadStatus();
