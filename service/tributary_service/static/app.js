// Tributary chat page: ask the model, then see which training documents made it answer so.
//
// Plain ES module, no build step, no third-party code. It talks to the service's own REST API
// (same origin): POST /v1/generate, POST /v1/attributions, GET /v1/index, GET /v1/examples/{id}.
// GET /v1/index also says how the model was trained to be asked (`prompting`): the page offers
// that prompt format, the chat template or plain text, with an example question to start from.
// Every failure is shown in the #alerts region (role=alert), never swallowed.

const KEY_STORAGE = "tributary.apiKey";
const TIMING_LABELS = [
  ["tokenize_ms", "tokenize"],
  ["gradient_ms", "gradient"],
  ["precondition_ms", "precondition"],
  ["search_ms", "search"],
  ["rerank_ms", "rerank"],
  ["fetch_ms", "fetch"],
  ["token_wise_ms", "token-wise"],
  ["total_ms", "server total"],
];
const MAX_ALERTS = 3;

const $ = (id) => document.getElementById(id);
const el = {
  alerts: $("alerts"),
  status: $("status"),
  indexInfo: $("index-info"),
  settings: $("settings"),
  settingsForm: $("settings-form"),
  apiKey: $("api-key"),
  forgetKey: $("forget-key"),
  topK: $("top-k"),
  maxNewTokens: $("max-new-tokens"),
  emptyChat: $("empty-chat"),
  exchange: $("exchange"),
  promptView: $("prompt-view"),
  reply: $("reply"),
  replyHelp: $("reply-help"),
  legend: $("legend"),
  showSources: $("show-sources"),
  direction: $("direction"),
  composer: $("composer"),
  prompt: $("prompt"),
  promptMode: $("prompt-mode"),
  exampleButton: $("example-button"),
  formatHelp: $("format-help"),
  manualBox: $("manual-response"),
  manualNote: $("manual-note"),
  responseInput: $("response-input"),
  manualToggle: $("manual-toggle"),
  send: $("send"),
  sources: $("sources"),
  sourcesSummary: $("sources-summary"),
  sourcesEmpty: $("sources-empty"),
  selectionBar: $("selection-bar"),
  selectionText: $("selection-text"),
  clearSelection: $("clear-selection"),
  docLists: $("doc-lists"),
  sortBy: $("sort-by"),
  timings: $("timings"),
};

const state = {
  prompt: "",
  response: "",
  messages: null, // chat mode: the conversation so far (the user's turn), attributed as messages
  prompting: null, // GET /v1/index's `prompting`: how the model was trained to be asked
  chosenMode: null, // the prompt format the user picked, if any
  exchangeId: 0, // bumped for every new prompt/response: late answers for an old one are dropped
  generateDisabled: false,
  busy: false,
  result: null, // the AttributionResponse shown
  resultDirection: "helpful", // the direction it was asked for
  roundTripMs: 0,
  segments: [], // reply segments: {start, end, indices: [response token indices]}
  selected: new Set(), // selected segment positions
  anchor: null, // segment position where a Shift-range starts
  focusSeg: 0, // the reply segment that holds the roving tab stop
  refreshPending: false, // the direction changed while a request was in flight
  dragSelected: false, // a mouse drag just selected words: ignore the click that follows it
  sortBy: "influence", // or "verbatim": the documents' order in the list
  verbatimOf: null, // the example whose verbatim spans the reply shows (null: every listed example's)
};

// ------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(message, { status = 0, type = "error", code = null, param = null, requestId = null } = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.requestId = requestId;
  }
}

/** Call the service; resolve to the JSON body or reject with an ApiError built from the error envelope. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = el.apiKey.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  let text;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    text = await res.text();
  } catch (err) {
    throw new ApiError(
      `Cannot reach the Tributary server at ${location.origin} (${err.message}). Is it still running?`,
      { type: "network_error" },
    );
  }
  const requestId = res.headers.get("x-request-id");
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = data && typeof data === "object" ? data.error : null;
    if (e && typeof e.message === "string") {
      throw new ApiError(e.message, { status: res.status, type: e.type, code: e.code, param: e.param, requestId });
    }
    const snippet = text ? `: ${text.slice(0, 200)}` : "";
    throw new ApiError(`HTTP ${res.status} ${res.statusText}${snippet}`, { status: res.status, type: "http_error", requestId });
  }
  if (data === null) {
    throw new ApiError(`The server's answer to ${method} ${path} is not JSON.`, { status: res.status, type: "bad_response", requestId });
  }
  return data;
}

// --------------------------------------------------------------------------- alerts, status

function showError(err, context, title) {
  clearAlerts(context);
  const box = document.createElement("div");
  box.className = "alert-box";
  box.dataset.context = context;
  const head = document.createElement("p");
  head.className = "alert-title";
  head.textContent = title || "Error";
  const msg = document.createElement("p");
  msg.className = "alert-message";
  msg.textContent = err.message || String(err);
  box.append(head, msg);
  const meta = [];
  if (err.status) meta.push(`HTTP ${err.status}`);
  if (err.type && err.type !== "error") meta.push(err.type);
  if (err.code) meta.push(err.code);
  if (err.param) meta.push(`field: ${err.param}`);
  if (err.requestId) meta.push(`request ${err.requestId}`);
  if (meta.length) {
    const m = document.createElement("p");
    m.className = "alert-meta";
    m.textContent = meta.join(" · ");
    box.append(m);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "alert-close";
  close.setAttribute("aria-label", "Dismiss this message");
  close.textContent = "×";
  close.addEventListener("click", () => box.remove());
  box.append(close);
  el.alerts.append(box);
  while (el.alerts.children.length > MAX_ALERTS) el.alerts.firstElementChild.remove();
  if (err.status === 401) el.settings.open = true;
  console.error(`[tributary] ${context}:`, err);
}

function clearAlerts(context) {
  for (const box of [...el.alerts.children]) {
    if (!context || box.dataset.context === context) box.remove();
  }
}

function announce(text) {
  el.status.textContent = text;
}

// ------------------------------------------------------------------------------ formatting

function fmtScore(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  let s;
  if (a === 0) s = "0";
  else if (a < 1e-3 || a >= 1e4) s = a.toExponential(2);
  else s = a.toPrecision(3);
  return (x > 0 ? "+" : x < 0 ? "\u2212" : "") + s;
}

function fmtMs(ms) {
  return ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

function signClass(x) {
  return x > 0 ? "pos" : x < 0 ? "neg" : "zero";
}

/** Offsets from the server count code points (Python); JS strings count UTF-16 units. */
function codePointToUtf16(text) {
  if (!/[\uD800-\uDFFF]/.test(text)) return (i) => i;
  const map = [0];
  let u = 0;
  for (const ch of text) {
    u += ch.length;
    map.push(u);
  }
  return (i) => map[Math.max(0, Math.min(i, map.length - 1))];
}

/**
 * Turn scored tokens (character offsets into `text`) into ordered, non-overlapping segments.
 * Tokens that overlap or have no characters of their own (pieces of one multi-byte character)
 * join a neighbouring segment, so every score stays reachable.
 */
function segmentText(text, tokens) {
  const toU = codePointToUtf16(text);
  const items = [];
  tokens.forEach((t, i) => {
    if (t.start == null || t.start < 0) return;
    const start = Math.min(toU(t.start), text.length);
    const end = Math.min(toU(Math.max(t.end, t.start)), text.length);
    items.push({ i, start, end });
  });
  items.sort((a, b) => a.start - b.start || a.end - b.end);
  const out = [];
  let pending = [];
  for (const t of items) {
    const last = out[out.length - 1];
    if (t.end <= t.start || (last && t.start < last.end)) {
      if (last && t.start <= last.end) {
        last.end = Math.max(last.end, t.end);
        last.indices.push(t.i);
      } else {
        pending.push(t.i);
      }
      continue;
    }
    out.push({ start: t.start, end: t.end, indices: [...pending, t.i] });
    pending = [];
  }
  if (pending.length && out.length) out[out.length - 1].indices.push(...pending);
  return out;
}

/** Background strength in [0, 0.75] for a score relative to the largest magnitude shown. */
function heat(score, maxAbs) {
  if (!maxAbs || !score) return 0;
  const norm = Math.min(1, Math.abs(score) / maxAbs);
  return norm < 0.03 ? 0 : 0.1 + 0.65 * norm;
}

/**
 * Append `text` to `parent`, wrapping each segment with `wrap(segment, segText)` (which returns
 * an element) and leaving the text between segments, and leading whitespace, plain.
 */
function renderSegments(parent, text, segments, wrap) {
  let cursor = 0;
  segments.forEach((seg, pos) => {
    if (seg.start > cursor) parent.append(text.slice(cursor, seg.start));
    const piece = text.slice(seg.start, seg.end);
    const lead = piece.match(/^\s*/)[0];
    if (lead) parent.append(lead);
    const body = piece.slice(lead.length);
    if (body) parent.append(wrap(seg, body, pos));
    cursor = Math.max(cursor, seg.end);
  });
  if (cursor < text.length) parent.append(text.slice(cursor));
}

// ----------------------------------------------------------------------------------- settings

function loadSettings() {
  try {
    el.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    el.apiKey.value = "";
  }
}

function storeKey() {
  const key = el.apiKey.value.trim();
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch (err) {
    showError(new Error(`This browser refused to store the API key (${err.message}); it is used for this page only.`), "settings");
  }
}

function readPositiveInt(input, name) {
  const value = Number(input.value);
  if (!Number.isInteger(value) || value < 1) {
    el.settings.open = true;
    input.focus();
    throw new ApiError(`${name} must be a whole number of at least 1 (Settings).`, { type: "input" });
  }
  return value;
}

// --------------------------------------------------------------------------------- index info

async function loadIndexInfo() {
  try {
    const info = await api("/v1/index");
    const parts = [`${Number(info.n_examples).toLocaleString()} training documents`, `${info.score_variant} scores`];
    if (info.ranking) parts.push(`${info.ranking.replace("_", "-")} ranking`);
    el.indexInfo.textContent = parts.join(" · ");
    el.indexInfo.title = `index ${info.index_id}, created ${info.created_at}`;
    setPrompting(info.prompting);
    clearAlerts("index");
  } catch (err) {
    el.indexInfo.textContent = "index unavailable";
    showError(err, "index", err.status === 401 ? "The server wants an API key: enter it in Settings" : "Could not read the index");
  }
}

// ---------------------------------------------------------------------------- prompt format

const MODE_LABELS = {
  format: "Trained prompt format",
  chat: "Chat template",
  plain: "Plain text",
};

/** Offer the forms this model can be asked in; the server says which it was trained on. */
function setPrompting(prompting) {
  state.prompting = prompting || { mode: "plain", chat_template: false, prompt_format: null, example_question: null, stop: [] };
  const p = state.prompting;
  const modes = [];
  if (p.prompt_format) modes.push("format");
  if (p.chat_template) modes.push("chat");
  modes.push("plain");
  const chosen = state.chosenMode; // the user's own pick survives a reload of the index summary
  el.promptMode.replaceChildren(...modes.map((mode) => {
    const option = document.createElement("option");
    option.value = mode;
    option.textContent = MODE_LABELS[mode];
    return option;
  }));
  el.promptMode.value = modes.includes(chosen) ? chosen : p.mode;
  updatePromptMode();
}

function promptMode() {
  return el.promptMode.value || "plain";
}

function formatParts() {
  const template = state.prompting?.prompt_format || "{question}";
  const at = template.indexOf("{question}");
  return [template.slice(0, at), template.slice(at + "{question}".length)];
}

/** The prompt text sent for `text` in format mode: wrapped in the format unless it already is. */
function formatted(text) {
  const [prefix, suffix] = formatParts();
  const marks = [prefix.trim(), suffix.trim()].filter(Boolean);
  if (marks.some((m) => text.includes(m))) return text;
  return prefix + text.trim() + suffix;
}

function exampleText() {
  const q = state.prompting?.example_question;
  if (!q) return null;
  return promptMode() === "format" ? formatted(q) : q;
}

function updatePromptMode() {
  const mode = promptMode();
  const example = exampleText();
  el.prompt.placeholder = example ? `e.g. ${example}` : "Ask the model something…";
  el.exampleButton.hidden = !example;
  el.formatHelp.replaceChildren();
  if (mode === "format") {
    const code = document.createElement("code");
    code.textContent = state.prompting.prompt_format.replace("{question}", "…");
    const where = state.prompting.format_source === "configured" ? "this server's setting" : "its training data";
    el.formatHelp.append("Questions are sent in the format the model learned from " + where + ": ", code);
  } else if (mode === "chat") {
    el.formatHelp.textContent = "Your text is sent as a user turn through the model's chat template.";
  } else {
    el.formatHelp.textContent = "Your text is sent to the model exactly as typed.";
  }
}

function fillExample() {
  const example = exampleText();
  if (!example) return;
  el.prompt.value = example;
  el.prompt.focus();
  announce("An example question is in the prompt box: press Enter to send it.");
}

// ----------------------------------------------------------------------------- conversation

function setBusy(busy, what) {
  state.busy = busy;
  el.send.disabled = busy;
  el.showSources.disabled = busy || !state.response;
  el.composer.setAttribute("aria-busy", String(busy && what === "generate"));
  el.sources.setAttribute("aria-busy", String(busy && what === "sources"));
  el.send.textContent = busy && what === "generate" ? "Generating…" : manualMode() ? "Explain" : "Generate";
  el.showSources.textContent = busy && what === "sources" ? "Finding sources…" : "Show sources";
}

function manualMode() {
  return state.generateDisabled || el.manualToggle.checked;
}

function updateManualMode() {
  const manual = manualMode();
  el.manualBox.hidden = !manual;
  el.send.textContent = manual ? "Explain" : "Generate";
  if (state.generateDisabled) {
    el.manualToggle.checked = true;
    el.manualToggle.disabled = true;
    el.manualNote.textContent = "This server does not generate (it runs without --enable-generate): type or paste the model's reply, then press Explain.";
  } else {
    el.manualNote.textContent = "The reply you want explained, instead of one generated by the model.";
  }
}

function setExchange(prompt, response, messages = null) {
  state.exchangeId += 1;
  state.prompt = prompt;
  state.response = response;
  state.messages = messages;
  state.result = null;
  el.emptyChat.hidden = true;
  el.exchange.hidden = false;
  el.promptView.textContent = prompt;
  clearAlerts("sources");
  renderReply();
  renderSources();
  el.showSources.disabled = !response;
  if (!response) {
    el.reply.classList.add("reply-empty");
    el.reply.textContent = "(the model returned an empty reply: nothing to explain)";
  }
}

async function submitPrompt(event) {
  event.preventDefault();
  if (state.busy) return;
  clearAlerts("input");
  const typed = el.prompt.value;
  if (!typed.trim()) {
    showError(new Error("Type a prompt first."), "input", "Nothing to send");
    el.prompt.focus();
    return;
  }
  const mode = promptMode();
  const prompt = mode === "format" ? formatted(typed) : typed;
  const messages = mode === "chat" ? [{ role: "user", content: typed }] : null;
  if (manualMode()) {
    const response = el.responseInput.value;
    if (!response.trim()) {
      showError(new Error("Type the reply to explain in “Response to explain”."), "input", "No response to explain");
      el.responseInput.focus();
      return;
    }
    setExchange(prompt, response, messages);
    announce("Reply ready: press Show sources.");
    el.showSources.focus();
    return;
  }
  let maxNew;
  try {
    maxNew = readPositiveInt(el.maxNewTokens, "Reply length");
  } catch (err) {
    showError(err, "input", "Check the settings");
    return;
  }
  clearAlerts("generate");
  setBusy(true, "generate");
  try {
    const body = messages ? { messages, max_new_tokens: maxNew } : { prompt, max_new_tokens: maxNew };
    if (mode === "format" && state.prompting?.stop?.length) body.stop = state.prompting.stop;
    const out = await api("/v1/generate", { method: "POST", body });
    setExchange(prompt, out.response, messages);
    el.prompt.value = "";
    announce(`The model replied (${out.n_tokens} tokens). Press Show sources to see where it came from.`);
    setBusy(false);
    if (out.response) el.showSources.focus();
  } catch (err) {
    setBusy(false);
    if (err.code === "generate_disabled") {
      state.generateDisabled = true;
      updateManualMode();
      announce(el.manualNote.textContent);
      el.responseInput.focus();
    } else {
      showError(err, "generate", "The model could not answer");
    }
  }
}

// ------------------------------------------------------------------------------------ sources

function currentDirection() {
  return el.direction.querySelector("input:checked").value;
}

function setDirection(direction) {
  const input = el.direction.querySelector(`input[value="${direction}"]`);
  if (input) input.checked = true;
}

async function showSources() {
  if (state.busy || !state.response) return;
  clearAlerts("sources");
  clearAlerts("input");
  let topK;
  try {
    topK = readPositiveInt(el.topK, "Documents to retrieve");
  } catch (err) {
    showError(err, "input", "Check the settings");
    return;
  }
  const exchange = state.exchangeId;
  const input = state.messages
    ? { messages: [...state.messages, { role: "assistant", content: state.response }] }
    : { prompt: state.prompt, response: state.response };
  const body = { ...input, top_k: topK, direction: currentDirection(), token_wise: true, evidence: true };
  setBusy(true, "sources");
  el.sourcesSummary.textContent = "Finding sources…";
  const t0 = performance.now();
  try {
    const result = await api("/v1/attributions", { method: "POST", body });
    if (exchange !== state.exchangeId) return; // a newer prompt replaced this one
    state.result = result;
    state.resultDirection = body.direction;
    state.roundTripMs = performance.now() - t0;
    state.selected.clear();
    state.anchor = null;
    state.focusSeg = 0;
    renderReply();
    renderSources();
    announce(`${result.examples.length} source documents found.`);
  } catch (err) {
    if (exchange !== state.exchangeId) return;
    showError(err, "sources", "Could not find the sources");
    if (state.result) setDirection(state.resultDirection); // the list shown is still the old one
    renderSources();
  } finally {
    setBusy(false);
  }
  if (state.refreshPending) {
    state.refreshPending = false;
    if (state.result && currentDirection() !== state.resultDirection) showSources();
  }
}

// -------------------------------------------------------------------------------- reply heat-map

function renderReply() {
  el.reply.replaceChildren();
  el.reply.classList.remove("reply-empty", "has-heat");
  const tokens = state.result?.response_token_scores;
  state.segments = tokens ? segmentText(state.response, tokens) : [];
  el.replyHelp.hidden = el.legend.hidden = state.segments.length === 0;
  if (!state.segments.length) {
    el.reply.removeAttribute("role");
    el.reply.textContent = state.response;
    return;
  }
  el.reply.classList.add("has-heat");
  el.reply.setAttribute("role", "group");
  el.reply.setAttribute("aria-label", "Model reply, shaded by attribution");
  const scores = state.segments.map((seg) => seg.indices.reduce((s, i) => s + tokens[i].score, 0));
  const maxAbs = Math.max(0, ...scores.map(Math.abs));
  renderSegments(el.reply, state.response, state.segments, (seg, text, pos) => {
    const span = document.createElement("span");
    const score = scores[pos];
    span.className = `tok ${signClass(score)}`;
    span.style.setProperty("--a", heat(score, maxAbs).toFixed(3));
    span.textContent = text;
    span.dataset.seg = String(pos);
    span.dataset.tokens = seg.indices.join(",");
    span.dataset.score = String(score);
    span.tabIndex = pos === state.focusSeg ? 0 : -1;
    span.setAttribute("role", "button");
    span.setAttribute("aria-pressed", "false");
    span.setAttribute("aria-label", `${text} (score ${fmtScore(score)})`);
    span.title = `score ${fmtScore(score)}`;
    return span;
  });
  paintVerbatim();
  // The first rendered token holds the tab stop (segments made of whitespace are not rendered).
  if (!el.reply.querySelector('.tok[tabindex="0"]')) {
    const first = el.reply.querySelector(".tok");
    if (first) {
      first.tabIndex = 0;
      state.focusSeg = Number(first.dataset.seg);
    }
  }
  paintSelection();
}

/** The response characters [start, end) (UTF-16) that `examples` share verbatim with the reply. */
function verbatimRanges(examples) {
  const toU = codePointToUtf16(state.response);
  return examples.flatMap((ex) => (ex.verbatim?.response_spans ?? []).map((s) => [toU(s.start), toU(s.end)]));
}

/** Underline the reply's words that the listed documents (or the one pointed at) hold verbatim. */
function paintVerbatim() {
  const examples = state.result?.examples ?? [];
  const shown = state.verbatimOf === null ? examples : examples.filter((ex) => ex.example_id === state.verbatimOf);
  const ranges = verbatimRanges(shown);
  for (const span of tokenSpans()) {
    const seg = state.segments[Number(span.dataset.seg)];
    const copied = ranges.some(([a, b]) => seg.start < b && a < seg.end);
    span.classList.toggle("verb", copied);
  }
  el.reply.classList.toggle("verb-focus", state.verbatimOf !== null);
}

function tokenSpans() {
  return [...el.reply.querySelectorAll(".tok")];
}

function paintSelection() {
  for (const span of tokenSpans()) {
    const on = state.selected.has(Number(span.dataset.seg));
    span.classList.toggle("selected", on);
    span.setAttribute("aria-pressed", String(on));
  }
}

function selectedTokenIndices() {
  const out = [];
  for (const pos of [...state.selected].sort((a, b) => a - b)) out.push(...state.segments[pos].indices);
  return out;
}

function setSelection(positions, anchor = null) {
  state.selected = new Set(positions);
  if (anchor !== null) state.anchor = anchor;
  if (!state.selected.size) state.anchor = null;
  paintSelection();
  renderSources();
  const n = state.selected.size;
  announce(n ? `Documents ranked by the ${n === 1 ? "selected word" : `${n} selected words`}.` : "Documents ranked by the whole reply.");
}

function rangeBetween(a, b) {
  const present = new Set(tokenSpans().map((s) => Number(s.dataset.seg)));
  const out = [];
  for (let p = Math.min(a, b); p <= Math.max(a, b); p++) if (present.has(p)) out.push(p);
  return out;
}

function activateToken(pos, { extend = false, toggle = false } = {}) {
  if (extend && state.anchor !== null) {
    setSelection(rangeBetween(state.anchor, pos));
  } else if (toggle) {
    const next = new Set(state.selected);
    if (next.has(pos)) next.delete(pos);
    else next.add(pos);
    setSelection(next, pos);
  } else if (state.selected.size === 1 && state.selected.has(pos)) {
    setSelection([]);
  } else {
    setSelection([pos], pos);
  }
}

function moveFocus(span) {
  if (!span) return;
  for (const s of tokenSpans()) s.tabIndex = -1;
  span.tabIndex = 0;
  state.focusSeg = Number(span.dataset.seg);
  span.focus();
}

function onReplyClick(event) {
  const span = event.target.closest(".tok");
  if (state.dragSelected) {
    state.dragSelected = false; // the drag-selection was handled on mouseup
    return;
  }
  if (!span || !el.reply.contains(span)) return;
  moveFocus(span);
  activateToken(Number(span.dataset.seg), { extend: event.shiftKey, toggle: event.ctrlKey || event.metaKey });
}

function onReplyMouseUp() {
  const sel = window.getSelection();
  if (!sel || sel.isCollapsed || !sel.rangeCount) return;
  const range = sel.getRangeAt(0);
  if (!el.reply.contains(range.commonAncestorContainer) && range.commonAncestorContainer !== el.reply) return;
  const positions = tokenSpans().filter((s) => range.intersectsNode(s)).map((s) => Number(s.dataset.seg));
  if (!positions.length) return;
  sel.removeAllRanges();
  state.dragSelected = true;
  setSelection(positions, positions[0]);
}

function onReplyKeyDown(event) {
  const span = event.target.closest(".tok");
  if (!span) return;
  const spans = tokenSpans();
  const i = spans.indexOf(span);
  const pos = Number(span.dataset.seg);
  switch (event.key) {
    case "ArrowRight":
    case "ArrowDown":
      moveFocus(spans[Math.min(i + 1, spans.length - 1)]);
      break;
    case "ArrowLeft":
    case "ArrowUp":
      moveFocus(spans[Math.max(i - 1, 0)]);
      break;
    case "Home":
      moveFocus(spans[0]);
      break;
    case "End":
      moveFocus(spans[spans.length - 1]);
      break;
    case "Enter":
    case " ":
      activateToken(pos, { extend: event.shiftKey, toggle: event.ctrlKey || event.metaKey });
      break;
    case "Escape":
      if (!state.selected.size) return;
      setSelection([]);
      break;
    default:
      return;
  }
  event.preventDefault();
}

// ------------------------------------------------------------------------------ sources panel

/** Examples grouped by direction (server order), re-ranked by the selected reply tokens if any. */
function rankedGroups() {
  const examples = state.result.examples;
  const selected = selectedTokenIndices();
  const groups = new Map();
  examples.forEach((ex, serverRank) => {
    let selScore = null;
    if (selected.length && Array.isArray(ex.response_token_scores)) {
      selScore = selected.reduce((s, j) => s + (ex.response_token_scores[j] ?? 0), 0);
    }
    const item = { ex, serverRank, selScore, key: selScore ?? ex.score };
    if (!groups.has(ex.direction)) groups.set(ex.direction, []);
    groups.get(ex.direction).push(item);
  });
  if (!selected.length && state.sortBy === "verbatim") {
    for (const items of groups.values()) {
      const share = (it) => it.ex.verbatim?.response_coverage ?? 0;
      items.sort((a, b) => share(b) - share(a) || a.serverRank - b.serverRank);
    }
  }
  if (selected.length) {
    for (const [direction, items] of groups) {
      // Helpful: the largest contribution first; harmful: the most negative first.
      const sign = direction === "harmful" ? 1 : -1;
      items.sort((a, b) => sign * (a.key - b.key) || a.serverRank - b.serverRank);
    }
  }
  return groups;
}

function renderSources() {
  const result = state.result;
  el.docLists.replaceChildren();
  el.timings.replaceChildren();
  el.timings.hidden = true;
  el.selectionBar.hidden = true;
  if (!result) {
    el.sourcesEmpty.hidden = false;
    el.sourcesSummary.textContent = "";
    return;
  }
  el.sourcesEmpty.hidden = true;
  const n = result.examples.length;
  const selectedText = [...state.selected]
    .sort((a, b) => a - b)
    .map((p) => state.response.slice(state.segments[p].start, state.segments[p].end))
    .join("")
    .trim();
  el.sourcesSummary.textContent = n === 0
    ? "No training documents matched."
    : `${n} document${n === 1 ? "" : "s"} · ranked by ${state.selected.size ? "the selection"
      : state.sortBy === "verbatim" ? "verbatim overlap with the reply" : "influence on the whole reply"}`;
  if (state.selected.size) {
    el.selectionBar.hidden = false;
    el.selectionText.textContent = `“${selectedText.length > 60 ? `${selectedText.slice(0, 57)}…` : selectedText}”`;
  }
  const groups = rankedGroups();
  const several = groups.size > 1;
  for (const [direction, items] of groups) {
    const section = document.createElement("section");
    section.className = `doc-group doc-group-${direction}`;
    if (several) {
      const h = document.createElement("h3");
      h.textContent = direction === "helpful" ? "Helpful: made the reply more likely" : "Harmful: made the reply less likely";
      section.append(h);
    }
    const list = document.createElement("ol");
    list.className = "docs";
    list.setAttribute("aria-label", `${direction} documents`);
    const maxAbs = Math.max(0, ...items.map((it) => Math.abs(it.key)));
    items.forEach((item, rank) => list.append(renderDoc(item, rank + 1, maxAbs)));
    section.append(list);
    el.docLists.append(section);
  }
  renderTimings(result.timings);
}

function renderDoc({ ex, selScore, key }, rank, maxAbs) {
  const li = document.createElement("li");
  li.className = `doc doc-${ex.direction}`;
  li.dataset.exampleId = String(ex.example_id);
  li.dataset.rank = String(rank);
  li.dataset.score = String(key);

  const head = document.createElement("div");
  head.className = "doc-head";
  const rankEl = document.createElement("span");
  rankEl.className = "doc-rank";
  rankEl.textContent = String(rank);
  rankEl.setAttribute("aria-label", `rank ${rank}`);
  const score = document.createElement("span");
  score.className = `doc-score ${signClass(key)}`;
  score.textContent = fmtScore(key);
  score.title = selScore === null ? "attribution score" : "contribution of the selected words";
  const bar = document.createElement("span");
  bar.className = `doc-bar ${signClass(key)}`;
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.style.width = `${maxAbs ? Math.max(2, (100 * Math.abs(key)) / maxAbs) : 0}%`;
  bar.append(fill);
  head.append(rankEl, score, bar, verbatimBadge(ex));
  if (selScore !== null) {
    const overall = document.createElement("span");
    overall.className = "doc-overall";
    overall.textContent = `overall ${fmtScore(ex.score)}`;
    head.append(overall);
  }

  const meta = document.createElement("p");
  meta.className = "doc-meta";
  // The corpus's own record id (and file:line) first: what joins the result back to the user's data.
  const where = ex.file ? `${ex.file}${ex.line ? `:${ex.line}` : ""}` : null;
  for (const [label, value, title] of [
    ["provider", ex.provider, "provider"],
    ["source", ex.source, "source"],
    ["record", ex.record_id, "record id (the id field in the corpus)"],
    ["file", where, "corpus file and line"],
    ["id", `#${ex.example_id}`, "example id (the index's row number)"],
  ]) {
    if (value == null || value === "") continue;
    const item = document.createElement("span");
    item.className = `doc-meta-${label}`;
    item.title = title;
    item.textContent = value;
    meta.append(item);
  }

  const text = document.createElement("p");
  text.className = "doc-text";
  text.id = `doc-text-${ex.direction}-${ex.example_id}`;
  renderDocText(text, ex.text, ex.token_scores, ex.verbatim?.response_spans);

  const more = document.createElement("button");
  more.type = "button";
  more.className = "btn-link doc-more";
  more.textContent = "Full text";
  more.setAttribute("aria-expanded", "false");
  more.setAttribute("aria-controls", text.id);
  more.addEventListener("click", () => toggleFullText(more, text, ex));
  meta.append(more);

  li.append(head, meta, text);
  // pointing at a document shows its own verbatim spans in the reply
  const focusOn = () => { state.verbatimOf = ex.example_id; paintVerbatim(); };
  const focusOff = () => { state.verbatimOf = null; paintVerbatim(); };
  li.addEventListener("mouseenter", focusOn);
  li.addEventListener("mouseleave", focusOff);
  li.addEventListener("focusin", focusOn);
  li.addEventListener("focusout", focusOff);
  return li;
}

/** "copies 64% of the reply" or "no shared wording": copying and teaching told apart at a glance. */
function verbatimBadge(ex) {
  const badge = document.createElement("span");
  const v = ex.verbatim;
  if (!v) return badge;
  const share = v.response_coverage;
  badge.className = `verb-badge ${share > 0 ? "copied" : "none"}`;
  badge.textContent = share > 0 ? `verbatim ${Math.round(100 * share)}%` : "no shared wording";
  badge.title = share > 0
    ? `holds ${Math.round(100 * share)}% of the reply word for word (longest run ${v.longest_response_span} characters; `
      + `${Math.round(100 * v.prompt_coverage)}% of the prompt)`
    : "shares no run of 12 or more characters with the reply: its influence is not copying";
  return badge;
}

function renderDocText(container, text, tokenScores, verbatimSpans) {
  container.replaceChildren();
  const toU = codePointToUtf16(text);
  const marks = []; // the influential tokens: {start, end, score, a}
  if (Array.isArray(tokenScores) && tokenScores.length) {
    const segments = segmentText(text, tokenScores);
    const scores = segments.map((seg) => seg.indices.reduce((s, i) => s + tokenScores[i].score, 0));
    const maxAbs = Math.max(0, ...scores.map(Math.abs));
    segments.forEach((seg, pos) => {
      const a = heat(scores[pos], maxAbs);
      if (a >= 0.3) marks.push({ start: seg.start, end: seg.end, score: scores[pos], a }); // only the influential ones
    });
  }
  const verb = (verbatimSpans ?? [])
    .map((s) => [Math.min(toU(s.example_start), text.length), Math.min(toU(s.example_end), text.length)])
    .filter(([a, b]) => a < b);
  const cuts = [...new Set([0, text.length, ...marks.flatMap((m) => [m.start, m.end]), ...verb.flat()])].sort((a, b) => a - b);
  for (let n = 0; n + 1 < cuts.length; n++) {
    const [x, y] = [cuts[n], cuts[n + 1]];
    const piece = text.slice(x, y);
    const mark = marks.find((m) => m.start <= x && y <= m.end);
    const copied = verb.some(([a, b]) => a <= x && y <= b);
    if (!mark && !copied) {
      container.append(piece);
      continue;
    }
    const node = document.createElement("mark");
    node.className = [mark ? `ttok ${signClass(mark.score)}` : "", copied ? "vspan" : ""].join(" ").trim();
    if (mark) node.style.setProperty("--a", mark.a.toFixed(3));
    node.title = [mark ? `token score ${fmtScore(mark.score)}` : "", copied ? "also in the reply, word for word" : ""]
      .filter(Boolean).join(" · ");
    node.textContent = piece;
    container.append(node);
  }
}

async function toggleFullText(button, container, ex) {
  const expanded = button.getAttribute("aria-expanded") === "true";
  if (expanded) {
    renderDocText(container, ex.text, ex.token_scores, ex.verbatim?.response_spans);
    button.setAttribute("aria-expanded", "false");
    button.textContent = "Full text";
    return;
  }
  button.disabled = true;
  try {
    const full = await api(`/v1/examples/${encodeURIComponent(ex.example_id)}`);
    renderDocText(container, full.text, ex.token_scores, ex.verbatim?.response_spans); // offsets index the full text
    button.setAttribute("aria-expanded", "true");
    button.textContent = "Less";
  } catch (err) {
    showError(err, "example", `Could not load document #${ex.example_id}`);
  } finally {
    button.disabled = false;
  }
}

function renderTimings(timings) {
  if (!timings) return;
  const rows = TIMING_LABELS.filter(([k]) => typeof timings[k] === "number" && (timings[k] > 0 || k === "total_ms"));
  rows.push(["round_trip", "round trip"]);
  const values = { ...timings, round_trip: state.roundTripMs };
  for (const [k, label] of rows) {
    const wrap = document.createElement("div");
    wrap.className = `timing timing-${k}`;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = fmtMs(values[k]);
    wrap.append(dt, dd);
    el.timings.append(wrap);
  }
  el.timings.hidden = false;
}

// -------------------------------------------------------------------------------------- wiring

function submitOnEnter(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    el.composer.requestSubmit();
  }
}

/** Keep the sticky sources panel below the sticky header, whose height grows with alerts. */
function trackHeaderHeight() {
  const header = document.querySelector(".topbar");
  const update = () => document.documentElement.style.setProperty("--header-h", `${header.offsetHeight}px`);
  update();
  if ("ResizeObserver" in window) new ResizeObserver(update).observe(header);
}

function init() {
  trackHeaderHeight();
  loadSettings();
  el.settingsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey();
    el.settings.open = false;
    el.settings.querySelector("summary").focus();
    announce("Settings saved.");
    loadIndexInfo();
  });
  el.settings.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !el.settings.open) return;
    el.settings.open = false;
    el.settings.querySelector("summary").focus();
  });
  el.apiKey.addEventListener("change", storeKey);
  el.forgetKey.addEventListener("click", () => {
    el.apiKey.value = "";
    storeKey();
    announce("API key forgotten.");
  });
  el.composer.addEventListener("submit", submitPrompt);
  el.prompt.addEventListener("keydown", submitOnEnter);
  el.responseInput.addEventListener("keydown", submitOnEnter);
  el.manualToggle.addEventListener("change", updateManualMode);
  el.promptMode.addEventListener("change", () => {
    state.chosenMode = el.promptMode.value;
    updatePromptMode();
  });
  el.exampleButton.addEventListener("click", fillExample);
  el.showSources.addEventListener("click", showSources);
  el.direction.addEventListener("change", () => {
    if (!state.result) return;
    if (state.busy) state.refreshPending = true; // re-asked once the request in flight is done
    else showSources();
  });
  el.clearSelection.addEventListener("click", () => {
    setSelection([]);
    const first = el.reply.querySelector('.tok[tabindex="0"]');
    if (first) first.focus();
  });
  el.reply.addEventListener("click", onReplyClick);
  el.reply.addEventListener("mousedown", () => {
    state.dragSelected = false;
  });
  el.reply.addEventListener("mouseup", onReplyMouseUp);
  el.reply.addEventListener("keydown", onReplyKeyDown);
  el.sortBy.addEventListener("change", () => {
    state.sortBy = el.sortBy.querySelector("input:checked")?.value ?? "influence";
    if (state.result) renderSources();
  });
  updateManualMode();
  setBusy(false);
  loadIndexInfo();
}

init();
