// SegResearch web page. Plain JavaScript, no framework, no build step, nothing fetched from
// elsewhere: it talks to the LangGraph API of the server that served it (threads, runs,
// streams, the context schema) and to the few /segresearch/ routes of the same server.
"use strict";

const BASE = location.pathname.replace(/\/segresearch\/ui\/?.*$/, "");
const TOKEN_KEY = "segresearch.token";
const GRAPH = "seg_research";
// Shown first; every other field of the context schema goes under "More settings".
const COMMON = ["model", "search", "kb", "segmenter", "max_turns", "num_frames", "review"];
const STREAM_MODES = ["updates", "custom"];
// Settings a person changed, kept per server (localStorage is per origin) until reset.
const SETTINGS_KEY = "segresearch.settings.v1";

// What the form calls each context field, and its help, in the words of someone trying the
// method; the schema's own title and description (developer words) go in the tooltip. A
// field missing here still shows, under its schema title (and is marked for the tests).
const FIELD_TEXT = {
  model: ["Model", "The vision-language model that answers: the server's own, a model server's address (openai:NAME@http://host:port/v1) or a recorded run (replay:FILE)."],
  search: ["Search", "Where the model looks up what it does not know."],
  kb: ["Knowledge base", "A folder on the server with the texts (and pictures) to search, for the knowledge-base searches."],
  retriever_url: ["Retrieval server address", "For Search: retrieval server; e.g. http://127.0.0.1:8001."],
  search_cache: ["Search cache file", "A file on the server that keeps search results, so the same search is quick and gives the same results; empty or off: no cache."],
  search_cache_ttl: ["Keep cached results for (seconds)", "After this long a search is made again."],
  allow_private_urls: ["Let web image search open local addresses", "Off: pictures at private or local network addresses are not fetched."],
  text_topk: ["Text results per search", "How many text results the model reads for each search."],
  image_topk: ["Picture results per search", "How many pictures the model sees for each picture search."],
  segmenter: ["Segmenter", "What turns the answer's box and point into a mask on every frame."],
  sam2_checkpoint: ["SAM 2 weights file", "A SAM 2 checkpoint (.pt) on the server, for Segmenter: SAM 2."],
  sam2_config: ["SAM 2 configuration", "One shipped with SAM 2, e.g. configs/sam2.1/sam2.1_hiera_l.yaml; empty: chosen from the weights file's name."],
  sam2_image_size: ["SAM 2 resolution (pixels)", "0: SAM 2's own (1024); smaller is faster and coarser."],
  max_turns: ["Most searches and looks", "How many times the model may search or look closely at a frame before it must answer."],
  num_frames: ["Frames shown first", "How many frames, spread over the video, the model sees at the start."],
  frame_size: ["Frame size (pixels)", "The frames are shown to the model as squares of this side."],
  keyframe_size: ["Close-up size (pixels)", "The side of the square a frame is shown at when the model looks closely."],
  search_image_size: ["Search picture size (pixels)", "The side of the square search pictures are shown at."],
  coord_style: ["How the model writes positions", "Must match the model: Qwen3-VL writes 0–1000 across the frame, Qwen2.5-VL writes pixels of the picture it saw."],
  prompt_variant: ["Instructions to the model", "With or without the search tools."],
  system_prompt_file: ["Instructions file", "A text file on the server that replaces the built-in instructions."],
  max_new_tokens: ["Longest reply (tokens)", "How much the model may write in one turn."],
  max_response_tokens: ["Longest run (tokens)", "How much the model may write over all its turns; empty: no limit."],
  temperature: ["Randomness", "0: always the most likely words; higher: more varied replies (up to 2)."],
  feedback_retries: ["Format reminders", "How many times a reply with no usable step gets a reminder of the format instead of ending the run."],
  request_timeout: ["Model time limit (seconds)", "How long one reply from the model may take."],
  search_timeout: ["Search time limit (seconds)", "How long one search may take."],
  output_dir: ["Output folder", "Where on the server this run's files go, inside the server's output folder; empty: a new folder for each run."],
  run_segmentation: ["Make masks", "Turn the answer into a mask on every frame."],
  review: ["Review the answer first", "Pause after the answer, so you can check or move the box and point before the masks are made."],
};
// Plain names for the values of the fields the schema enumerates (the value itself is in
// the option's tooltip); a value missing here is shown as it is.
const OPTION_TEXT = {
  search: { local: "Knowledge base (meaning)", bm25: "Knowledge base (keywords)", hybrid: "Knowledge base (meaning and keywords)",
            retriever: "Retrieval server", ddg: "Web: DuckDuckGo", tavily: "Web: Tavily (needs a key on the server)",
            serper: "Web: Serper (needs a key on the server)", none: "No search" },
  segmenter: { auto: "Automatic (SAM 2 when installed, else GrabCut)", sam2: "SAM 2", grabcut: "GrabCut (no model weights)", none: "None: the answer only" },
  coord_style: { qwen3: "0–1000 across the frame (Qwen3-VL)", qwen25: "Pixels (Qwen2.5-VL)" },
  prompt_variant: { auto: "As the Search setting says", search: "With search", no_search: "Without search" },
};
// Why a run stopped, in words.
const STOP_TEXT = {
  answer: "answered",
  no_action: "the model's last reply had no step the run could take",
  max_turns: "the model used all its searches and looks without answering (raise “Most searches and looks”)",
  max_tokens: "the model wrote as much as it may (raise “Longest run”)",
  "error:config": "a setting cannot be used",
  "error:media": "the media cannot be read",
  "error:input": "the request is incomplete",
  "error:model": "the model failed",
  "error:segment": "the masks could not be made",
};

const $ = (id) => document.getElementById(id);
const S = {
  info: null, assistantId: null, schema: null, fields: [], media: null, running: false,
  thread: null, runId: null, ctx: null, abort: null, mediaInfo: null, frames: new Map(),
  keyframe: null, answerPx: null, searchMeta: new Map(), review: null, editor: null,
  blobs: new Map(), finalSeen: false, stepCount: 0, setup: null, demoPreset: false,
};

class AuthError extends Error {}

// ------------------------------------------------------------------ requests

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const t = token();
  if (t) headers.set("Authorization", "Bearer " + t);
  const init = { ...opts, headers };
  if (opts.json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(opts.json);
    delete init.json;
  }
  const res = await fetch(BASE + path, init);
  if (res.status === 401) {
    askToken(t ? "The server did not accept this token." : "");
    throw new AuthError("a token is needed");
  }
  return res;
}

function detailText(body) {
  let d = body && (body.detail ?? body.message ?? body.error);
  if (d === undefined || d === null) return "";
  if (Array.isArray(d)) d = d.map((x) => (typeof x === "string" ? x : x.msg || JSON.stringify(x))).join("\n");
  return typeof d === "string" ? d : JSON.stringify(d);
}

async function httpError(res) {
  let text = "";
  try { text = detailText(await res.json()); } catch (_) { /* not JSON */ }
  const e = new Error(text || `${res.status} ${res.statusText}`);
  e.status = res.status;
  return e;
}

async function getJson(path, opts) {
  const res = await api(path, opts);
  if (!res.ok) throw await httpError(res);
  return res.json();
}

// Images and files are fetched with the token (an <img src> cannot send a header) and shown
// from blob URLs, cached per path: the same frame appears in several places.
function blobUrl(path) {
  if (!S.blobs.has(path)) {
    S.blobs.set(path, api(path).then(async (res) => {
      if (!res.ok) throw await httpError(res);
      return URL.createObjectURL(await res.blob());
    }));
    S.blobs.get(path).catch(() => S.blobs.delete(path));
  }
  return S.blobs.get(path);
}

function refPath(url) {
  if (typeof url !== "string") return null;
  if (url.startsWith("media-ref:")) return "/segresearch/media/" + url.slice(10);
  return null;
}

function setImage(img, url) {
  if (typeof url === "string" && url.startsWith("data:")) { img.src = url; return Promise.resolve(img); }
  const path = refPath(url) || url;
  return blobUrl(path).then((u) => new Promise((resolve) => {
    img.onload = () => resolve(img);
    img.onerror = () => resolve(img);
    img.src = u;
  })).catch(() => img);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function imageBlocks(msg) {
  const content = msg && msg.content;
  if (!Array.isArray(content)) return [];
  return content.filter((b) => b && b.type === "image_url")
    .map((b) => (typeof b.image_url === "string" ? b.image_url : b.image_url && b.image_url.url));
}

// ------------------------------------------------------------------ token

function askToken(problem) {
  $("token-box").hidden = false;
  $("app").hidden = true;
  $("token-error").textContent = problem || "";
  $("server-line").textContent = "Authentication is on for this server.";
  $("token").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  S.blobs.clear();
  init();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ------------------------------------------------------------------ start

async function init() {
  let info;
  try {
    info = await getJson("/segresearch/info");
  } catch (e) {
    if (!(e instanceof AuthError)) $("server-line").textContent = "The server did not answer: " + e.message;
    return;
  }
  S.info = info;
  $("token-box").hidden = true;
  $("app").hidden = false;
  $("forget-token").hidden = !token();
  const roots = info.media_roots_restricted ? `media from ${info.media_roots.join(", ")}` : "media from anywhere";
  $("server-line").textContent = `server ${info.version} · ${roots} · access token ${info.auth ? "needed" : "not needed"}`;
  $("upload-limit").textContent = info.uploads ? `(up to ${fmtMb(info.upload_limit_mb)})` : "(uploads are off)";
  $("file").disabled = !info.uploads;
  const setup = getJson("/segresearch/setup").catch(() => null);  // may wait on a model server's probe
  loadLibrary().catch(() => {});
  loadHistory().catch(() => {});
  try {
    await loadSchema();
  } catch (e) {
    if (!(e instanceof AuthError)) $("form-error").textContent = "Could not read the settings this server takes: " + pageText(e.message);
  }
  S.setup = await setup;
  if (S.schema) startForm();
}

function fmtMb(mb) { return (mb >= 10 ? Math.round(mb) : Math.round(mb * 10) / 10) + " MB"; }

// ------------------------------------------------------------------ the form

async function loadSchema() {
  const found = await getJson("/assistants/search", { method: "POST", json: { graph_id: GRAPH, limit: 20 } });
  const a = found.find((x) => x.metadata && x.metadata.created_by === "system") || found[0];
  if (!a) throw new Error(`no assistant for the graph '${GRAPH}'`);
  S.assistantId = a.assistant_id;
  const schemas = await getJson(`/assistants/${a.assistant_id}/schemas`);
  S.schema = schemas.context_schema || { properties: {} };
  buildForm(S.schema, serverDefaults());
}

function serverDefaults() { return (S.info && S.info.defaults) || {}; }

function fieldType(prop) {
  const alts = prop.anyOf || prop.oneOf;
  let p = prop, nullable = false;
  if (alts) {
    nullable = alts.some((x) => x.type === "null");
    p = { ...prop, ...(alts.find((x) => x.type !== "null") || {}) };
  }
  if (p.enum) return { kind: "enum", p, nullable };
  if (p.type === "boolean") return { kind: "bool", p, nullable };
  if (p.type === "integer" || p.type === "number") return { kind: p.type, p, nullable };
  return { kind: "text", p, nullable };
}

function fieldLabel(name) { return (FIELD_TEXT[name] || [])[0] || name; }

function tooltip(name, prop) {
  return `${name} (server setting SEGRESEARCH_${name.toUpperCase()})` + (prop.description ? `\n${prop.description}` : "");
}

function buildForm(schema, defaults) {
  const props = schema.properties || {};
  const names = Object.keys(props);
  const order = [...COMMON.filter((n) => names.includes(n)), ...names.filter((n) => !COMMON.includes(n))];
  $("common-fields").replaceChildren();
  $("more-fields").replaceChildren();
  S.fields = [];
  for (const name of order) {
    const prop = props[name];
    const t = fieldType(prop);
    const id = "ctx-" + name;
    const helpId = id + "-help";
    const [plain, help] = FIELD_TEXT[name] || [prop.title || name, prop.description || ""];
    const tip = tooltip(name, prop);
    const def = defaults[name];
    const wrap = el("div", { class: (t.kind === "bool" ? "check" : "field") + (FIELD_TEXT[name] ? "" : " fallback"), "data-field": name });
    const label = el("label", { for: id, text: plain, title: tip });
    let input;
    if (t.kind === "bool") {
      input = el("input", { type: "checkbox", id, "aria-describedby": helpId, title: tip });
      input.checked = def === true;
      wrap.append(input, label);
    } else if (t.kind === "enum") {
      input = el("select", { id, "aria-describedby": helpId, title: tip });
      const values = t.p.enum.map(String);
      // a server default outside the list (a plugin's backend, other letter case) stays choosable
      if (def !== undefined && def !== null && !values.includes(String(def))) values.unshift(String(def));
      for (const v of values) input.append(el("option", { value: v, text: (OPTION_TEXT[name] || {})[v] || v, title: v }));
      if (def !== undefined && def !== null) input.value = String(def);
      wrap.append(label, input);
    } else {
      const numeric = t.kind === "integer" || t.kind === "number";
      input = el("input", {
        id, type: numeric ? "number" : "text", "aria-describedby": helpId, spellcheck: "false", title: tip,
        min: t.p.minimum ?? (t.p.exclusiveMinimum !== undefined ? t.p.exclusiveMinimum : undefined),
        max: t.p.maximum ?? t.p.exclusiveMaximum, step: t.kind === "integer" ? "1" : numeric ? "any" : undefined,
        placeholder: t.nullable ? "no limit" : undefined,
      });
      if (def !== undefined && def !== null) input.value = String(def);
      wrap.append(label, input);
      if (name === "model") {
        input.setAttribute("list", id + "-list");
        wrap.append(el("datalist", { id: id + "-list" }));
      }
    }
    if (help) wrap.append(el("p", { class: "help", id: helpId, text: help }));
    (COMMON.includes(name) ? $("common-fields") : $("more-fields")).append(wrap);
    S.fields.push({ name, input, t, def });
  }
}

function field(name) { return S.fields.find((f) => f.name === name); }

function setField(name, value) {
  const f = field(name);
  if (!f) return false;
  if (f.t.kind === "bool") { f.input.checked = value === true; return true; }
  const v = value === null || value === undefined ? "" : String(value);
  if (f.t.kind === "enum" && ![...f.input.options].some((o) => o.value === v)) return false;
  f.input.value = v;
  return true;
}

// The form as the person left it: every field whose value is not the server's default.
function changedFields() {
  const out = {};
  for (const { name, input, t, def } of S.fields) {
    if (t.kind === "bool") { if (input.checked !== (def === true)) out[name] = input.checked; }
    else if (input.value.trim() !== String(def ?? "")) out[name] = input.value.trim();
  }
  return out;
}

function remembered() {
  try {
    const v = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
    return v && typeof v === "object" && !Array.isArray(v) ? v : {};
  } catch (_) { return {}; }
}

function saveSettings() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(changedFields())); } catch (_) { /* storage off: nothing kept */ }
}

// Server defaults, then what this browser remembers; when the server's own model does not
// answer and the recorded demo is offered, the demo's settings instead of that model.
function startForm(fromReset) {
  const saved = fromReset ? {} : remembered();
  let restored = 0;
  for (const [name, value] of Object.entries(saved)) if (setField(name, value)) restored += 1;
  const st = S.setup && S.setup.model, demo = S.setup && S.setup.demo;
  S.demoPreset = false;
  if (st && st.ok === false && demo && !("model" in saved)) { applyDemoSettings(demo); S.demoPreset = true; }
  const list = $("ctx-model-list");
  if (list) {
    const specs = [serverDefaults().model, demo && demo.model].filter((v) => typeof v === "string" && v);
    list.replaceChildren(...[...new Set(specs)].map((v) => el("option", { value: v })));
  }
  $("demo-offer").hidden = !demo;
  $("settings-saved").textContent = restored ? `${restored} setting${restored === 1 ? "" : "s"} restored from your last visit; changes are remembered in this browser.`
    : "Settings you change are remembered in this browser.";
  modelNote();
  $("settings").dataset.ready = "1";
}

function applyDemoSettings(demo) {
  for (const name of ["model", "search", "kb"]) setField(name, demo[name]);
}

// A note under Settings when the chosen model cannot work or is the recorded demo.
function modelNote() {
  const note = $("settings-note");
  const f = field("model");
  const st = S.setup && S.setup.model, demo = S.setup && S.setup.demo;
  note.replaceChildren();
  note.className = "note";
  note.hidden = true;
  if (!f || !st) return;
  const value = f.input.value.trim();
  const where = st.reason === "unreachable" ? `No model server answers at ${st.address}`
    : st.reason === "no-key" ? "The server has no API key for its model"
    : st.reason === "missing" ? "The server's model file is missing"
    : st.reason === "malformed" ? "The server's model setting is not one it can use" : "";
  if (demo && value === demo.model) {
    note.className = "note info";
    const what = "it replays one recorded run, made for the demo clip and its question, and needs no model server.";
    note.append(el("p", { text: S.demoPreset && where ? `${where} (the server's own model), so the form starts with the recorded demo: ${what}`
      : `Model: the recorded demo; ${what}` }));
    if (demo.media) {
      const b = el("button", { type: "button", class: "link", text: "Use the demo clip and question" });
      b.addEventListener("click", useDemo);
      note.append(b);
    }
    note.hidden = false;
  } else if (st.ok === false && value === String(st.spec).trim()) {
    note.append(el("p", { text: `${where}, so runs with this model will fail. Start that server, type another model above` + (demo ? ", or try the recorded demo." : ".") }));
    if (demo) {
      const b = el("button", { type: "button", class: "link", text: "Use the recorded demo" });
      b.addEventListener("click", () => { applyDemoSettings(demo); saveSettings(); modelNote(); });
      note.append(b);
    }
    note.hidden = false;
  }
}

async function useDemo() {
  const demo = S.setup && S.setup.demo;
  if (!demo || S.running) return;
  applyDemoSettings(demo);
  saveSettings();
  modelNote();
  $("query").value = demo.query;
  $("media-error").textContent = "";
  if (!demo.media) { $("media-chosen").textContent = "Now choose the media and press Run."; return; }
  document.querySelector("input[name=source][value=upload]").checked = true;
  $("upload-pane").hidden = false;
  $("server-pane").hidden = true;
  $("media-chosen").textContent = "Preparing the demo clip…";
  try {
    const up = await getJson("/segresearch/demo-media", { method: "POST", json: {} });
    S.media = { path: up.path, label: "demo clip" };
    $("media-chosen").textContent = `The demo clip: ${up.frames} frames, ${up.width}×${up.height}. Press Run.`;
    loadLibrary().catch(() => {});
  } catch (e) {
    $("media-chosen").textContent = "";
    if (!(e instanceof AuthError)) $("media-error").textContent = `The demo clip could not be prepared: ${pageText(e.message)}`;
  }
}

$("demo-button").addEventListener("click", useDemo);
$("settings").addEventListener("change", () => { saveSettings(); modelNote(); });
$("settings").addEventListener("input", (ev) => { if (ev.target && ev.target.id === "ctx-model") modelNote(); });
$("reset-settings").addEventListener("click", () => {
  try { localStorage.removeItem(SETTINGS_KEY); } catch (_) { /* storage off */ }
  if (!S.schema) return;
  buildForm(S.schema, serverDefaults());
  startForm(true);
  $("settings-saved").textContent = "Settings reset to the server's defaults.";
});

// Only what differs from the server's own defaults is sent: values the operator configured
// stay trusted by the server's path policy, and the request says what the person changed.
function collectContext() {
  const ctx = {};
  const problems = [];
  for (const f of S.fields) {
    const { name, input, t, def } = f;
    if (t.kind === "bool") {
      if (input.checked !== (def === true)) ctx[name] = input.checked;
      continue;
    }
    const raw = input.value.trim();
    if (t.kind === "integer" || t.kind === "number") {
      if (raw === "") {
        if (t.nullable && def !== null && def !== undefined) ctx[name] = null;
        continue;
      }
      if (!input.checkValidity()) {
        problems.push(`${fieldLabel(name)}: ${input.validationMessage}`);
        continue;
      }
      const v = Number(raw);
      if (def === undefined || def === null || v !== Number(def)) ctx[name] = v;
      continue;
    }
    if (raw !== String(def ?? "")) ctx[name] = raw;
  }
  if (problems.length) throw new Error(problems.join("\n"));
  return ctx;
}

// Server messages are written for the command line and the API; on the page they name the
// form's fields and what to change there, not flags, variables or shell commands.
function pageText(message) {
  const demo = S.setup && S.setup.demo;
  let m = String(message || "");
  if (/^(?:Failed to fetch|NetworkError when attempting to fetch resource\.?|Load failed|network error)$/i.test(m.trim())) {
    return "the page lost its connection to the server; is the server still running?";
  }
  m = m.replace(/The OpenAI-compatible server at (\S+) is not reachable \(([^)]*(?:\([^)]*\)[^)]*)*)\)\.[\s\S]*$/,
    (_, url, why) => `No model server answers at ${url} (${why}). Start it, or change “Model” under Settings` + (demo ? " (the recorded demo needs no server)." : "."));
  m = m.replace(/No API key for the OpenAI API[\s\S]*$/,
    "The model needs an API key that this server does not have. Ask whoever runs the server, or change “Model” under Settings.");
  m = m.replace(/(?:search backend '[^']*': )?no knowledge base configured[\s\S]*$/,
    "This search needs a knowledge base: fill in “Knowledge base” under Settings, or set “Search” to “No search”.");
  m = m.replace(/(?:search backend '[^']*': )?knowledge base folder not found: (\S+)/, "“Knowledge base”: there is no folder $1 on the server");
  m = m.replace(/the path is outside (?:the allowed roots|the output root)(?: \([^)]*\))?/g, "the path is outside the folders this server lets the page use");
  m = m.replace(/Context\.(\w+)(?:\s*\/\s*--[\w-]+)?(?:\s*\/\s*SEGRESEARCH_\w+)?/g, (all, name) => (FIELD_TEXT[name] ? `“${fieldLabel(name)}”` : all));
  m = m.replace(/`?--([a-z][\w-]*)(?:[ =](?!under)[^\s`,;)]+)?`?/g, (all, flag) => {
    const name = flag.replace(/-/g, "_");
    return FIELD_TEXT[name] ? `“${fieldLabel(name)}” under Settings` : all;
  });
  m = m.replace(/ ?\([^()]*SEGRESEARCH_[A-Z_]+[^()]*\)/g, "");  // server variables are the operator's business
  // one problem per line, as the API sends them ("context: max_turns: ..."): each names
  // the form's field by its label
  const inputs = { media: "Media", query: "What should be segmented" };
  return m.split("\n").map((line) => line.replace(/^(?:context|input): /, "")
    .replace(/^(\w+): /, (all, name) => (FIELD_TEXT[name] ? `${fieldLabel(name)}: ` : inputs[name] ? `${inputs[name]}: ` : all))).join("\n");
}

function stopText(reason) { return STOP_TEXT[reason] || reason; }

// ------------------------------------------------------------------ media

for (const r of document.querySelectorAll("input[name=source]")) {
  r.addEventListener("change", () => {
    const upload = document.querySelector("input[name=source]:checked").value === "upload";
    $("upload-pane").hidden = !upload;
    $("server-pane").hidden = upload;
    S.media = null;
    $("media-chosen").textContent = "";
    $("media-error").textContent = "";
    if (!upload) chooseServerMedia();
  });
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  S.media = null;
  $("media-error").textContent = "";
  $("media-chosen").textContent = "";
  if (!file) return;
  const limit = S.info ? S.info.upload_limit_mb * 1048576 : Infinity;
  if (file.size > limit) {
    $("media-error").textContent = `${file.name} is ${fmtMb(file.size / 1048576)}; this server takes uploads up to ${fmtMb(S.info.upload_limit_mb)}.`;
    return;
  }
  const prog = $("upload-progress");
  prog.hidden = false;
  prog.value = 0;
  $("media-chosen").textContent = `Uploading ${file.name}…`;
  try {
    const up = await uploadFile(file, prog);
    S.media = { path: up.path, label: file.name };
    const what = up.kind === "video" ? `video, ${up.frames} frames` : up.kind;
    $("media-chosen").textContent = `Uploaded ${file.name}: ${what}, ${up.width}×${up.height}.` + (up.note ? ` ${up.note}` : "");
    loadLibrary().catch(() => {});
  } catch (e) {
    $("media-chosen").textContent = "";
    $("media-error").textContent = `Upload refused: ${pageText(e.message)}`;
  } finally {
    prog.hidden = true;
  }
});

function uploadFile(file, prog) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", BASE + "/segresearch/uploads?name=" + encodeURIComponent(file.name));
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", "Bearer " + t);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) { prog.max = e.total; prog.value = e.loaded; } };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201) resolve(body);
      else {
        if (xhr.status === 401) askToken("The server did not accept this token.");
        reject(new Error(detailText(body) || `HTTP ${xhr.status}`));
      }
    };
    xhr.onerror = () => reject(new Error("the server closed the connection (is the file over its upload limit?)"));
    xhr.send(file);
  });
}

async function loadLibrary() {
  const lib = await getJson("/segresearch/library");
  const sel = $("library");
  const keep = sel.value;
  sel.replaceChildren(el("option", { value: "", text: "— choose —" }));
  const groups = new Map();
  for (const it of lib.items) {
    if (!groups.has(it.root)) groups.set(it.root, el("optgroup", { label: it.root }));
    const name = it.path.split("/").slice(-2).join("/");
    const what = it.kind === "frames" ? `frames (${it.frames})` : it.kind;
    groups.get(it.root).append(el("option", { value: it.path, text: `${name} — ${what}` }));
  }
  for (const g of groups.values()) sel.append(g);
  sel.value = keep;
  sel.dataset.loaded = "1";
}

function chooseServerMedia() {
  const typed = $("media-path").value.trim();
  const picked = $("library").value;
  const path = typed || picked;
  S.media = path ? { path, label: path.split("/").pop() } : null;
  $("media-chosen").textContent = path ? `Media: ${path}` : "";
}

$("library").addEventListener("change", () => { $("media-path").value = ""; chooseServerMedia(); });
$("media-path").addEventListener("input", chooseServerMedia);

// ------------------------------------------------------------------ running

$("run-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (S.running) return;
  $("form-error").textContent = "";
  $("media-error").textContent = "";
  const query = $("query").value.trim();
  if (!S.media) { $("media-error").textContent = "Choose media first: upload a file or pick one from the server."; return; }
  if (!query) { $("form-error").textContent = "Type what should be segmented."; $("query").focus(); return; }
  let ctx;
  try { ctx = collectContext(); } catch (e) { $("form-error").textContent = e.message; return; }
  saveSettings();
  resetRun(query);
  setRunning(true);
  setStatus("Starting the run…");
  announce("Run started.");
  bringIntoView($("run-view"));
  try {
    const thread = await getJson("/threads", { method: "POST", json: { metadata: { source: "web-page", query } } });
    S.thread = thread.thread_id;
    const defaults = (S.info && S.info.defaults) || {};
    if (!("output_dir" in ctx) && !defaults.output_dir && S.info.output_root) ctx.output_dir = "web/" + thread.thread_id;
    S.ctx = ctx;
    await streamRun({ assistant_id: S.assistantId || GRAPH, input: { query, media: S.media.path }, context: ctx,
                      stream_mode: STREAM_MODES, on_disconnect: "cancel" });
  } catch (e) {
    failed(e);
    // a refused run leaves its new thread empty: remove it rather than list it
    if (S.thread && (e.status === 403 || e.status === 422)) api(`/threads/${S.thread}`, { method: "DELETE" }).catch(() => {});
  } finally {
    setRunning(false);
    loadHistory().catch(() => {});
  }
});

function failed(e) {
  if (e instanceof AuthError) return;
  if (e.name === "AbortError") { setStatus("Stopped."); badge("stopped", "bad"); ended("Run stopped.", false); return; }
  const refused = e.status === 403 || e.status === 422;
  const msg = refused ? `The server refused the run: ${pageText(e.message)}` : `The run failed: ${pageText(e.message)}`;
  $("form-error").textContent = msg;
  showBanner(msg);
  setStatus(refused ? "Refused by the server." : "Failed.");
  badge(refused ? "refused" : "failed", "bad");
  ended(msg, false);
}

function announce(text) {
  // cleared first so that the same words twice are still read out
  const a = $("announce");
  a.textContent = "";
  setTimeout(() => { a.textContent = text; }, 30);
}

function reducedMotion() { return window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches; }

// Scrolls only when the element's top is not already in the upper part of the window: a
// person who can see it keeps their place.
function bringIntoView(elem) {
  const r = elem.getBoundingClientRect();
  if (r.top >= 0 && r.top < window.innerHeight * 0.6) return;
  elem.scrollIntoView({ block: "start", behavior: reducedMotion() ? "auto" : "smooth" });
}

// The end of a run, wherever the person is on the page: the run's sticky header, the
// line beside the Run button, and the screen reader all say it.
function ended(text, ok) {
  $("run-head").classList.toggle("done", ok);
  $("run-head").classList.toggle("failed", !ok);
  $("form-run-text").textContent = text;
  $("form-run-state").hidden = false;
  $("jump-result").hidden = false;
  $("jump-result").textContent = ok ? "Show the result" : "Show why";
  announce(text);
}

function jumpToResult() {
  const target = !$("result-panel").hidden ? $("result-panel") : !$("run-error").hidden ? $("run-error") : $("run-view");
  target.scrollIntoView({ block: "start", behavior: reducedMotion() ? "auto" : "smooth" });
  target.focus({ preventScroll: true });
}

$("jump-result").addEventListener("click", jumpToResult);
$("form-run-jump").addEventListener("click", jumpToResult);

$("stop-button").addEventListener("click", async () => {
  if (S.abort) S.abort.abort();
  if (S.thread && S.runId) {
    try { await api(`/threads/${S.thread}/runs/${S.runId}/cancel`, { method: "POST" }); } catch (_) { /* gone */ }
  }
});

function setRunning(on) {
  S.running = on;
  $("run-button").disabled = on;
  $("stop-button").disabled = !on;
  if (on) {
    badge("running", "live");
    $("run-head").classList.remove("done", "failed");
    $("jump-result").hidden = true;
    $("form-run-text").textContent = "Running…";
    $("form-run-state").hidden = false;
  }
}

async function streamRun(body) {
  const ctrl = new AbortController();
  S.abort = ctrl;
  S.finalSeen = false;
  const res = await api(`/threads/${S.thread}/runs/stream`, {
    method: "POST", json: body, signal: ctrl.signal, headers: { Accept: "text/event-stream" },
  });
  if (!res.ok) throw await httpError(res);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + dec.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      sseBlock(block);
    }
  }
  if (buf.trim()) sseBlock(buf);
  S.abort = null;
  if (!S.finalSeen && !S.review) afterStream();
}

function sseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const c = line.indexOf(":");
    const field = c < 0 ? line : line.slice(0, c);
    let v = c < 0 ? "" : line.slice(c + 1);
    if (v.startsWith(" ")) v = v.slice(1);
    if (field === "event") event = v;
    else if (field === "data") data.push(v);
  }
  if (!data.length) return;
  let payload;
  try { payload = JSON.parse(data.join("\n")); } catch (_) { return; }
  try { onStream(event, payload); } catch (e) { console.error(e); }
}

function onStream(event, data) {
  if (event === "metadata") { S.runId = data.run_id; return; }
  if (event === "updates") {
    for (const [node, upd] of Object.entries(data || {})) onUpdate(node, upd);
  } else if (event === "custom") {
    onCustom(data);
  } else if (event === "error") {
    const msg = (data && (data.message || data.error)) || "the server reported an error";
    showBanner(`The run failed on the server: ${pageText(msg)}`);
    badge("error", "bad");
    ended(`The run failed on the server: ${pageText(msg)}`, false);
  }
}

// A stream that ended without a final event: paused for review (an interrupt), or stopped.
async function afterStream() {
  try {
    const st = await getJson(`/threads/${S.thread}/state`);
    const pause = pendingInterrupt(st);
    if (pause) { showReview(pause); return; }
    finishRun(finalFromValues(st.values || {}), true);
  } catch (e) { failed(e); }
}

function pendingInterrupt(st) {
  if (Array.isArray(st.interrupts) && st.interrupts.length) return st.interrupts[0].value;
  for (const t of st.tasks || []) if (t.interrupts && t.interrupts.length) return t.interrupts[0].value;
  return null;
}

// ------------------------------------------------------------------ the run view

function resetRun(query) {
  S.thread = null; S.runId = null; S.mediaInfo = null; S.frames = new Map(); S.keyframe = null;
  S.answerPx = null; S.searchMeta = new Map(); S.review = null; S.editor = null; S.stepCount = 0;
  $("run-query").textContent = query || "";
  $("intro").hidden = true;
  $("run-error").hidden = true;
  $("run-error").textContent = "";
  for (const id of ["frames-panel", "steps-panel", "keyframe-panel", "review-panel", "segment-panel", "result-panel"]) $(id).hidden = true;
  $("frames").replaceChildren();
  $("steps").replaceChildren();
  $("segment-progress").value = 0;
  $("segment-summary").textContent = "";
  $("overlay-video").removeAttribute("src");
  $("run-files").replaceChildren();
  $("run-badge").hidden = true;
  $("jump-result").hidden = true;
  $("form-run-state").hidden = true;
  $("run-head").classList.remove("done", "failed");
  for (const b of document.querySelectorAll("#history button")) b.setAttribute("aria-current", String(b.dataset.thread === S.thread));
}

function setStatus(text) { $("status").textContent = text; }

function badge(text, kind) {
  const b = $("run-badge");
  b.hidden = false;
  b.textContent = text;
  b.className = "badge " + (kind || "");
}

function showBanner(text, note) {
  const b = $("run-error");
  b.hidden = false;
  b.className = note ? "banner note" : "banner";
  b.textContent = text;
}

function onUpdate(node, upd) {
  if (node === "__interrupt__") {
    const first = Array.isArray(upd) ? upd[0] : upd;
    if (first && first.value) showReview(first.value);
    return;
  }
  if (!upd || typeof upd !== "object") return;
  const events = (upd.events || []).filter((e) => e && e.type !== "start");
  const msgs = (upd.messages || []).filter((m) => m && m.type !== "remove");
  if (upd.answer_px) { S.answerPx = upd.answer_px; showAnswerFrame(); }
  for (const ev of events) {
    if (ev.type === "media") showFrames(ev, msgs.find((m) => m.type === "human"));
    else if (ev.type === "model") addTurn(ev);
    else if (ev.type === "tool" && ev.name === "keyframe") addKeyframe(ev, msgs.find((m) => m.type === "human"));
    else if (ev.type === "tool") addSearch(ev, msgs.find((m) => m.type === "human"));
    else if (ev.type === "feedback") addStep("turn", "Format reminder", ev.reason || "");
    else if (ev.type === "review") addReviewed(ev);
    else if (ev.type === "segment") showSegment(ev);
    else if (ev.type === "error") addStep("error", `Error: ${stopText("error:" + ev.kind)}`, pageText(ev.message || ""));
  }
}

function onCustom(ev) {
  if (!ev || typeof ev !== "object") return;
  switch (ev.type) {
    case "status": setStatus(ev.message || ""); break;
    case "media": setStatus(`Loaded the ${ev.kind}: ${ev.num_frames} frame${ev.num_frames === 1 ? "" : "s"}, ${ev.width}×${ev.height}.`); break;
    case "turn": setStatus(`Turn ${ev.turn}: ${actionText(ev.action)}`); break;
    case "search":
      S.searchMeta.set(ev.name + "\u0000" + ev.query, ev);
      setStatus(ev.error ? `Search failed: ${ev.error}` : `Searched (${ev.backend}) “${ev.query}”: ${ev.hits} result${ev.hits === 1 ? "" : "s"}.`);
      break;
    case "keyframe": setStatus(ev.valid ? `Looking at frame ${ev.frame} in high resolution.` : `Frame ${ev.frame} is not one of the shown frames.`); break;
    case "progress": {
      if (ev.step === "index") {  // a knowledge base indexed on first use, before the first turn
        setStatus(`Indexing the knowledge base ${ev.label || ""} (first use): ${ev.done} of ${ev.total} entries.`);
        break;
      }
      $("segment-panel").hidden = false;
      const p = $("segment-progress");
      p.max = ev.total || 1;
      p.value = ev.done || 0;
      setStatus(`Segmenting with ${ev.label || ev.step}: ${ev.done} of ${ev.total} frames.`);
      break;
    }
    case "final": S.finalSeen = true; finishRun(ev, true); break;
    case "review": if (ev.decision === "refused") setStatus(`The reply was refused: ${ev.problem}`); break;
    default: break;
  }
}

function showFrames(ev, msg) {
  S.mediaInfo = ev;
  const refs = imageBlocks(msg);
  const ids = ev.frame_ids || [];
  const box = $("frames");
  box.replaceChildren();
  box.style.setProperty("--aspect", `${ev.width || 4}/${ev.height || 3}`);
  ids.forEach((fid, i) => {
    const img = el("img", { alt: `frame ${fid} as the model saw it` });
    if (refs[i]) { S.frames.set(fid, refs[i]); setImage(img, refs[i]); }
    box.append(el("figure", {}, img, el("figcaption", { text: `frame ${fid}` })));
  });
  $("frames-title").textContent = `Frames the model saw (${ids.length} of ${ev.num_frames}, ${ev.kind})`;
  $("frames-panel").hidden = false;
}

function thinking(text) {
  const m = /<thinking>([\s\S]*?)<\/thinking>/.exec(text || "");
  if (m) return m[1].trim();
  return (text || "").replace(/<(search|keyframe|answer)>[\s\S]*$/, "").trim();
}

function actionText(a) {
  if (!a) return "";
  if (a.type === "search") return `${a.name} “${a.query}”` + (a.error ? ` (${a.error})` : "");
  if (a.type === "keyframe") return `keyframe ${a.frame}`;
  if (a.type === "answer") return `answer: box [${a.bbox_2d.join(", ")}], point [${a.point_2d.join(", ")}]`;
  return `no action (${a.reason || "nothing recognised"})`;
}

function addStep(kind, title, body, extra) {
  $("steps-panel").hidden = false;
  const head = el("header", {}, el("span", { text: title }));
  if (extra) head.append(el("span", { class: "muted", text: extra }));
  const li = el("li", { class: "step " + kind }, head);
  if (body) li.append(el("p", { class: kind === "turn" ? "think" : "action", text: body }));
  $("steps").append(li);
  S.stepCount += 1;
  return li;
}

function addTurn(ev) {
  const li = addStep("turn", `Turn ${ev.turn}`, thinking(ev.response), `${ev.tokens} tokens · ${fmtS(ev.seconds)}`);
  li.dataset.kind = "turn";
  li.append(el("p", { class: "action", text: "→ " + actionText(ev.action) }));
}

function fmtS(s) { return typeof s === "number" ? (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`) : ""; }

function parseHits(text) {
  const body = (text || "").replace(/^\s*<information>/, "").replace(/<\/information>\s*$/, "");
  const parts = body.split(/(?:^|\n)\s*\d+\.\s(?=\(Title:)/).map((p) => p.trim()).filter(Boolean);
  const hits = [];
  for (const p of parts) {
    const m = /^\(Title:\s*([\s\S]*?)\)\s*([\s\S]*)$/.exec(p);
    if (m) hits.push({ title: m[1], text: m[2].trim() });
  }
  return { hits, plain: hits.length ? "" : body.trim() };
}

function addSearch(ev, msg) {
  const meta = S.searchMeta.get(ev.name + "\u0000" + ev.query);
  const extra = [meta && meta.backend, fmtS(ev.seconds)].filter(Boolean).join(" · ");
  const li = addStep("search", `${ev.name === "image_search" ? "Image search" : "Text search"}: “${ev.query}”`, "", extra);
  li.dataset.kind = "search";
  const { hits, plain } = parseHits(ev.observation);
  const refs = imageBlocks(msg);
  if (ev.error || plain) li.append(el("p", { class: "action", text: ev.error ? `Search failed: ${ev.error}` : plain }));
  if (hits.length) {
    const ol = el("ol", { class: "hits" });
    let k = 0;
    for (const h of hits) {
      const item = el("li", {}, el("span", { class: "title", text: h.title }));
      if (h.text === "<image>" && refs[k]) {
        const img = el("img", { alt: `image result: ${h.title}` });
        setImage(img, refs[k++]);
        item.append(el("div", { class: "hit-images" }, img));
      } else if (h.text) item.append(" — ", h.text.replace(/<image>/g, ""));
      ol.append(item);
    }
    li.append(ol);
  }
}

function addKeyframe(ev, msg) {
  const ok = ev.valid;
  const li = addStep("keyframe", `Keyframe ${ev.frame}`, ok ? "" : ev.observation || "not a shown frame", fmtS(ev.seconds));
  li.dataset.kind = "keyframe";
  const ref = imageBlocks(msg)[0];
  if (ok && ref) setKeyframe(ev.frame, ref, true);
}

function setKeyframe(fid, ref, highRes) {
  S.keyframe = { fid, ref, highRes, img: null };
  const img = new Image();
  const kf = S.keyframe;
  setImage(img, ref).then(() => { if (S.keyframe === kf) { kf.img = img; drawKeyframe(); } });
  $("keyframe-panel").hidden = false;
  $("keyframe-title").textContent = `Keyframe ${fid}`;
}

function showAnswerFrame() {
  const px = S.answerPx;
  if (!px || px.keyframe === null || px.keyframe === undefined) return;
  if (!S.keyframe || S.keyframe.fid !== px.keyframe) {
    const ref = S.frames.get(px.keyframe);
    if (ref) setKeyframe(px.keyframe, ref, false);
  } else drawKeyframe();
}

function drawKeyframe() {
  const kf = S.keyframe;
  if (!kf || !kf.img) return;
  const canvas = $("keyframe-canvas");
  const W = (S.mediaInfo && S.mediaInfo.width) || kf.img.naturalWidth;
  const H = (S.mediaInfo && S.mediaInfo.height) || kf.img.naturalHeight;
  const cw = Math.min(960, Math.max(kf.img.naturalWidth, 480));
  const ch = Math.round(cw * H / W);
  canvas.width = cw; canvas.height = ch;
  const g = canvas.getContext("2d");
  g.drawImage(kf.img, 0, 0, cw, ch);  // the model's square, back at the media's proportions
  const px = S.answerPx;
  let caption = `Frame ${kf.fid} as the model saw it` + (kf.highRes ? ` in high resolution (${kf.img.naturalWidth}×${kf.img.naturalHeight})` : "");
  if (px && px.keyframe === kf.fid && px.bbox_2d) {
    const s = cw / W;
    drawBox(g, px.bbox_2d.map((v) => v * s), px.point_2d && px.point_2d.map((v) => v * s), cw);
    caption += `; the answer: box [${px.bbox_2d.map(Math.round).join(", ")}] (green), point [${(px.point_2d || []).map(Math.round).join(", ")}] (red), in frame pixels.`;
    canvas.setAttribute("aria-label", `Keyframe ${kf.fid} with the answer's box and point`);
  } else {
    canvas.setAttribute("aria-label", `Keyframe ${kf.fid}`);
  }
  $("keyframe-caption").textContent = caption;
}

function drawBox(g, box, point, width) {
  const lw = Math.max(2, Math.round(width / 240));
  if (box) {
    g.lineWidth = lw + 2; g.strokeStyle = "rgba(0,0,0,.6)";
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    g.lineWidth = lw; g.strokeStyle = "#00d455";
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  if (point) {
    const r = Math.max(5, Math.round(width / 90));
    g.beginPath(); g.arc(point[0], point[1], r, 0, 2 * Math.PI);
    g.fillStyle = "#ff2a2a"; g.fill();
    g.lineWidth = 2; g.strokeStyle = "#fff"; g.stroke();
  }
}

function showSegment(ev) {
  $("segment-panel").hidden = false;
  const p = $("segment-progress");
  if (ev.skipped) { p.hidden = true; $("segment-summary").textContent = `Segmentation skipped: ${ev.skipped}.`; return; }
  p.hidden = false;
  p.max = Math.max(ev.frames || 1, 1);
  p.value = p.max;
  const key = ev.keyframe_area !== undefined && ev.keyframe_area !== null ? ` · ${ev.keyframe_area} px on the keyframe` : "";
  $("segment-summary").textContent = `${ev.summary || ""}${ev.empty ? ` — ${ev.empty}` : ""} · ${fmtS(ev.seconds)}${key}`;
}

function addReviewed(ev) {
  const text = ev.decision === "edit" ? `edited: box [${ev.answer_px.bbox_2d.map(Math.round).join(", ")}], point [${ev.answer_px.point_2d.map(Math.round).join(", ")}]` : ev.decision;
  addStep("keyframe", "Review", text);
  $("review-panel").hidden = true;
  S.review = null;
}

function finalFromValues(v) {
  return { type: "final", stop_reason: v.stop_reason, answer: v.answer, answer_px: v.answer_px,
           masks_dir: v.masks_dir, turns: v.turns, error: v.error };
}

// ``live``: the run just ended in this page (announced); otherwise a stored run is shown.
function finishRun(final, live) {
  $("review-panel").hidden = true;
  const reason = final.stop_reason || "unknown";
  if (final.answer_px) { S.answerPx = final.answer_px; showAnswerFrame(); }
  if (reason === "answer") {
    badge("answer", "ok");
    const done = `Done: answered in ${final.turns} turn${final.turns === 1 ? "" : "s"}.`;
    setStatus(done);
    if (live) ended(`Run finished. ${done}`, true);
  } else {
    badge(reason.startsWith("error:") ? "error" : "no answer", "bad");
    const why = final.error ? pageText(final.error) : "";
    showBanner(`Stopped: ${stopText(reason)}` + (why ? ` — ${why}` : ""));
    setStatus(`Finished without an answer (${stopText(reason)}).`);
    if (live) ended(`Run finished without an answer: ${why || stopText(reason)}`, false);
  }
  if (S.thread) loadResult(S.thread).catch(() => {});
}

async function loadResult(tid) {
  const r = await getJson(`/segresearch/threads/${tid}/result`);
  if (S.thread !== tid) return;
  const files = $("run-files");
  files.replaceChildren();
  for (const name of r.files.filter((n) => /\.(md|json|jpg)$/.test(n))) {
    const a = el("a", { href: "#", text: name });
    a.addEventListener("click", (e) => { e.preventDefault(); download(`/segresearch/threads/${tid}/files/${name}`, name); });
    files.append(a);
  }
  const dl = $("download-masks");
  dl.dataset.path = `/segresearch/threads/${tid}/masks.zip`;
  dl.hidden = !r.masks;
  if (!r.masks && !r.files.length) return;
  $("result-panel").hidden = false;
  $("result-title").textContent = r.masks ? `Result: masks for ${r.masks} frame${r.masks === 1 ? "" : "s"}` : "Result";
  if (r.masks && r.frame_ids.length) {
    const slider = $("mask-slider");
    slider.max = String(r.frame_ids.length - 1);
    const key = S.answerPx ? r.frame_ids.indexOf(S.answerPx.keyframe) : -1;
    slider.value = String(Math.max(0, key));
    slider.dataset.ids = JSON.stringify(r.frame_ids);
    $("mask-figure").hidden = false;
    showMaskFrame();
  }
  const video = $("overlay-video");
  if (r.overlay && video.canPlayType('video/mp4; codecs="avc1.42E01E"')) {
    $("overlay-figure").hidden = false;
    video.src = await blobUrl(`/segresearch/threads/${tid}/files/overlay.mp4`);
  } else {
    $("overlay-figure").hidden = true;
  }
}

function showMaskFrame() {
  const slider = $("mask-slider");
  const ids = JSON.parse(slider.dataset.ids || "[]");
  const fid = ids[Number(slider.value)] ?? 0;
  $("mask-frame-id").textContent = String(fid);
  slider.setAttribute("aria-valuetext", `frame ${fid}`);
  const img = $("mask-frame");
  img.alt = `Frame ${fid} with its mask`;
  setImage(img, `/segresearch/threads/${S.thread}/frames/${fid}.jpg?overlay=1`);
}

$("mask-slider").addEventListener("input", showMaskFrame);

async function download(path, name) {
  try {
    const url = await blobUrl(path);
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) { if (!(e instanceof AuthError)) showBanner(`Download failed: ${e.message}`); }
}

$("download-masks").addEventListener("click", () => {
  const path = $("download-masks").dataset.path;
  if (path) { S.blobs.delete(path); download(path, `masks-${S.thread.slice(0, 8)}.zip`); }
});

// ------------------------------------------------------------------ review

function showReview(pause) {
  S.review = pause;
  badge("waiting for review", "wait");
  setStatus("Paused before segmentation: check the answer, change it if needed, then continue.");
  const px = pause.answer_px || {};
  const [W, H] = pause.frame_size || [S.mediaInfo && S.mediaInfo.width, S.mediaInfo && S.mediaInfo.height];
  S.editor = { W, H, fid: px.keyframe, box: (px.bbox_2d || [0, 0, W / 2, H / 2]).slice(), point: (px.point_2d || [W / 4, H / 4]).slice(), sel: "box", drag: null, img: null };
  $("review-problem").textContent = pause.problem || "";
  $("review-help").textContent = `Frame ${px.keyframe} (${W}×${H} pixels). Selected: the box.`;
  $("review-panel").hidden = false;
  syncInputs();
  const img = new Image();
  const ed = S.editor;
  setImage(img, `/segresearch/threads/${S.thread}/frames/${px.keyframe}.jpg`).then(() => {
    if (S.editor === ed) { ed.img = img; drawEditor(); }
  });
  drawEditor();
  $("review-panel").scrollIntoView({ block: "nearest" });
  if (S.running) announce("The run is waiting for your review of the answer.");
}

const INPUTS = ["r-x1", "r-y1", "r-x2", "r-y2", "r-px", "r-py"];

function syncInputs() {
  const ed = S.editor;
  const vals = [...ed.box, ...ed.point];
  INPUTS.forEach((id, i) => {
    const inp = $(id);
    inp.value = String(Math.round(vals[i]));
    inp.min = "0";
    inp.max = String((i % 2 === 0 ? ed.W : ed.H) - 1);
  });
}

for (const id of INPUTS) {
  $(id).addEventListener("input", () => {
    const ed = S.editor;
    if (!ed) return;
    const v = INPUTS.map((k) => Number($(k).value));
    if (v.some((x) => !Number.isFinite(x))) return;
    ed.box = v.slice(0, 4);
    ed.point = v.slice(4);
    drawEditor();
  });
}

function drawEditor() {
  const ed = S.editor;
  if (!ed) return;
  const canvas = $("review-canvas");
  const cw = ed.img ? ed.img.naturalWidth : Math.min(960, ed.W);
  const ch = Math.round(cw * ed.H / ed.W);
  if (canvas.width !== cw) canvas.width = cw;
  if (canvas.height !== ch) canvas.height = ch;
  const g = canvas.getContext("2d");
  g.fillStyle = "#1d2430";
  g.fillRect(0, 0, cw, ch);
  if (ed.img) g.drawImage(ed.img, 0, 0, cw, ch);
  const s = cw / ed.W;
  const box = ed.box.map((v) => v * s);
  drawBox(g, box, ed.point.map((v) => v * s), cw);
  const r = Math.max(5, Math.round(cw / 120));
  corners(box).forEach(([x, y], i) => {
    g.fillStyle = ed.sel === "c" + i ? "#f2a900" : "#ffffff";
    g.strokeStyle = "#000";
    g.lineWidth = 1;
    g.fillRect(x - r, y - r, 2 * r, 2 * r);
    g.strokeRect(x - r, y - r, 2 * r, 2 * r);
  });
  if (ed.sel === "point") {
    g.beginPath(); g.arc(ed.point[0] * s, ed.point[1] * s, r * 2, 0, 2 * Math.PI);
    g.strokeStyle = "#f2a900"; g.lineWidth = 2; g.stroke();
  }
  canvas.setAttribute("aria-label", `Box and point editor: box ${ed.box.map(Math.round).join(", ")}; point ${ed.point.map(Math.round).join(", ")}`);
}

function corners(b) { return [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]; }

function toFrame(ev) {
  const canvas = $("review-canvas");
  const rect = canvas.getBoundingClientRect();
  const ed = S.editor;
  return [(ev.clientX - rect.left) / rect.width * ed.W, (ev.clientY - rect.top) / rect.height * ed.H];
}

function clampEditor() {
  const ed = S.editor;
  const cl = (v, hi) => Math.min(Math.max(v, 0), hi - 1);
  ed.box = [cl(ed.box[0], ed.W), cl(ed.box[1], ed.H), cl(ed.box[2], ed.W), cl(ed.box[3], ed.H)];
  ed.point = [cl(ed.point[0], ed.W), cl(ed.point[1], ed.H)];
}

const canvasEl = $("review-canvas");
canvasEl.addEventListener("pointerdown", (ev) => {
  const ed = S.editor;
  if (!ed) return;
  canvasEl.focus();
  const [x, y] = toFrame(ev);
  const rect = canvasEl.getBoundingClientRect();
  const tol = 14 * ed.W / rect.width;
  const near = (a, b) => Math.abs(a[0] - b[0]) <= tol && Math.abs(a[1] - b[1]) <= tol;
  let sel = null;
  if (near([x, y], ed.point)) sel = "point";
  else {
    const i = corners(ed.box).findIndex((c) => near([x, y], c));
    if (i >= 0) sel = "c" + i;
    else if (x >= ed.box[0] && x <= ed.box[2] && y >= ed.box[1] && y <= ed.box[3]) sel = "box";
  }
  if (!sel) { ed.box = [x, y, x, y]; sel = "c2"; }  // drag out a new box from here
  ed.sel = sel;
  ed.drag = { x, y, box: ed.box.slice(), point: ed.point.slice() };
  canvasEl.setPointerCapture(ev.pointerId);
  drawEditor();
  helpSelected();
});

canvasEl.addEventListener("pointermove", (ev) => {
  const ed = S.editor;
  if (!ed || !ed.drag) return;
  const [x, y] = toFrame(ev);
  moveSelected(x - ed.drag.x, y - ed.drag.y, ed.drag);
});

function endDrag() {
  const ed = S.editor;
  if (!ed || !ed.drag) return;
  ed.drag = null;
  normaliseBox();
  syncInputs();
  drawEditor();
}
canvasEl.addEventListener("pointerup", endDrag);
canvasEl.addEventListener("pointercancel", endDrag);

function moveSelected(dx, dy, from) {
  const ed = S.editor;
  const b = from.box.slice();
  if (ed.sel === "point") ed.point = [from.point[0] + dx, from.point[1] + dy];
  else if (ed.sel === "box") {
    const w = b[2] - b[0], h = b[3] - b[1];
    const x1 = Math.min(Math.max(b[0] + dx, 0), ed.W - 1 - w), y1 = Math.min(Math.max(b[1] + dy, 0), ed.H - 1 - h);
    ed.box = [x1, y1, x1 + w, y1 + h];
  } else {
    const i = Number(ed.sel.slice(1));
    const xi = i === 0 || i === 3 ? 0 : 2, yi = i === 0 || i === 1 ? 1 : 3;
    b[xi] += dx; b[yi] += dy;
    ed.box = b;
  }
  clampEditor();
  syncInputs();
  drawEditor();
}

function normaliseBox() {
  const ed = S.editor;
  const [a, b, c, d] = ed.box;
  ed.box = [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
}

function helpSelected() {
  const ed = S.editor;
  const names = { box: "the box", point: "the point", c0: "the top-left corner", c1: "the top-right corner", c2: "the bottom-right corner", c3: "the bottom-left corner" };
  $("review-help").textContent = `Frame ${ed.fid} (${ed.W}×${ed.H} pixels). Selected: ${names[ed.sel] || ed.sel}.`;
}

canvasEl.addEventListener("keydown", (ev) => {
  const ed = S.editor;
  if (!ed) return;
  const k = ev.key.toLowerCase();
  if (["1", "2", "3", "4"].includes(k)) { ed.sel = "c" + (Number(k) - 1); }
  else if (k === "p") ed.sel = "point";
  else if (k === "b") ed.sel = "box";
  else if (k.startsWith("arrow")) {
    const step = ev.shiftKey ? 10 : 1;
    const dx = k === "arrowleft" ? -step : k === "arrowright" ? step : 0;
    const dy = k === "arrowup" ? -step : k === "arrowdown" ? step : 0;
    moveSelected(dx, dy, { box: ed.box.slice(), point: ed.point.slice() });
    normaliseBox();
  } else return;
  ev.preventDefault();
  drawEditor();
  helpSelected();
});

async function resume(value) {
  if (S.running) return;
  $("review-problem").textContent = "";
  setRunning(true);
  setStatus("Continuing the run…");
  const pause = S.review, editor = S.editor;
  S.review = null;
  try {
    if (!S.ctx) {  // a thread opened from the history: resume with its last run's settings
      const runs = await getJson(`/threads/${S.thread}/runs?limit=1`);
      S.ctx = (runs[0] && runs[0].kwargs && runs[0].kwargs.context) || {};
    }
    $("review-panel").hidden = true;
    await streamRun({ assistant_id: S.assistantId || GRAPH, command: { resume: value }, context: S.ctx,
                      stream_mode: STREAM_MODES });
  } catch (e) {
    // 422: the server refused the reply before running anything; the thread still waits
    // for one, so the editor comes back as it was, with the server's reason.
    if (e.status === 422 && pause) replyRefused(pause, editor, e.message);
    else failed(e);
  } finally {
    setRunning(false);
    loadHistory().catch(() => {});
  }
}

function replyRefused(pause, editor, message) {
  showReview(pause);
  if (editor) {  // the reviewer's box and point, not the answer's again
    Object.assign(S.editor, { box: editor.box.slice(), point: editor.point.slice(), sel: editor.sel, img: editor.img || S.editor.img });
    syncInputs();
    drawEditor();
  }
  $("review-problem").textContent = `The server refused this reply: ${message}`;
  setStatus("The reply was refused; the run is still waiting for review.");
}

$("review-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const ed = S.editor;
  if (!ed) return;
  normaliseBox();
  clampEditor();
  if (ed.box[2] - ed.box[0] < 1 || ed.box[3] - ed.box[1] < 1) { $("review-problem").textContent = "The box is empty: drag it larger."; return; }
  const [px, py] = ed.point;
  if (px < ed.box[0] || px > ed.box[2] || py < ed.box[1] || py > ed.box[3]) { $("review-problem").textContent = "The point must be inside the box: move it in (select it with P)."; return; }
  const r1 = (v) => Math.round(v * 10) / 10;
  resume({ keyframe: ed.fid, bbox_2d: ed.box.map(r1), point_2d: ed.point.map(r1) });
});
$("review-accept").addEventListener("click", () => resume("accept"));
$("review-reject").addEventListener("click", () => resume("reject"));

// ------------------------------------------------------------------ history

$("history-refresh").addEventListener("click", () => loadHistory().catch(() => {}));

async function loadHistory() {
  const threads = await getJson("/threads/search", { method: "POST", json: { limit: 30, sort_by: "updated_at", sort_order: "desc" } });
  const list = $("history");
  list.replaceChildren();
  let shown = 0;
  for (const t of threads) {
    const v = t.values || {};
    if (!v.query) continue;
    shown += 1;
    const state = t.status === "interrupted" ? "waiting for review" : t.status === "busy" ? "running" : v.stop_reason ? stopText(v.stop_reason) : t.status;
    const when = new Date(t.updated_at || t.created_at).toLocaleString();
    const fid = (v.answer_px && v.answer_px.keyframe) ?? (v.frame_ids && v.frame_ids[0]);
    const thumb = el("img", { alt: "" });
    const btn = el("button", { type: "button", "data-thread": t.thread_id, "aria-current": String(t.thread_id === S.thread) },
      thumb, el("span", {}, el("span", { class: "q", text: v.query }), el("span", { class: "meta", text: `${state} · ${when}` })));
    btn.addEventListener("click", () => openThread(t.thread_id));
    list.append(el("li", {}, btn));
    if (fid !== undefined && fid !== null) setImage(thumb, `/segresearch/threads/${t.thread_id}/frames/${fid}.jpg?overlay=1&max_side=128`);
  }
  $("history-empty").hidden = shown > 0;
}

async function openThread(tid) {
  if (S.running) return;
  let st;
  try { st = await getJson(`/threads/${tid}/state`); } catch (e) { failed(e); return; }
  const v = st.values || {};
  resetRun(v.query);
  S.thread = tid;
  S.ctx = null;
  for (const b of document.querySelectorAll("#history button")) b.setAttribute("aria-current", String(b.dataset.thread === tid));
  replayValues(v);
  const pause = pendingInterrupt(st);
  if (pause) showReview(pause);
  else if (v.stop_reason) finishRun(finalFromValues(v));
  setStatus(`A stored run (not re-run), as it happened: ${v.stop_reason === "answer" ? `answered in ${v.turns} turns` : pause ? "waiting for review" : `stopped (${v.stop_reason || st.next || "unknown"})`}.`);
  $("run-view").focus();
}

// The stored state holds the same pieces the live stream delivered: the trajectory's
// events, and messages whose user turns after the first are the tools' observations, in
// the order of the tool events. Replaying them through onUpdate draws the same view.
function replayValues(v) {
  const msgs = (v.messages || []).filter((m) => m && m.type !== "remove" && m.type !== "system");
  const humans = msgs.filter((m) => m.type === "human");
  const first = humans[0];
  const obs = humans.slice(1);
  let k = 0;
  for (const ev of v.events || []) {
    if (!ev || ev.type === "start") continue;
    if (ev.type === "media") onUpdate("load_media", { events: [ev], messages: first ? [first] : [] });
    else if (ev.type === "model") {
      const upd = { events: [ev] };
      if (ev.action && ev.action.type === "answer" && v.answer_px) upd.answer_px = (v.reviewed && v.reviewed.original) || v.answer_px;
      onUpdate("reason", upd);
    } else if (ev.type === "tool" || ev.type === "feedback") onUpdate(ev.name || ev.type, { events: [ev], messages: obs[k] ? [obs[k++]] : [] });
    else onUpdate("event", { events: [ev] });
  }
  if (v.answer_px) { S.answerPx = v.answer_px; showAnswerFrame(); }
}

init();
