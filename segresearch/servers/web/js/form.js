// The settings form, built from the context schema the server publishes: each field with
// the page's words for it, the server's defaults, what this browser remembers, the recorded
// demo when the server's own model does not answer, and the context a run is sent with.
import { AuthError, getJson } from "./api.js";
import { $, el } from "./dom.js";
import { loadLibrary } from "./media.js";
import { GRAPH, S } from "./state.js";
import { FIELD_TEXT, OPTION_TEXT, fieldLabel, pageText } from "./text.js";

// Shown first; every other field of the context schema goes under "More settings".
const COMMON = ["model", "search", "kb", "segmenter", "max_turns", "num_frames", "protocol", "review", "verify_rounds", "ask_user"];
// Settings that exist only in the tool-calling protocol: off and disabled with the tags.
const TOOLS_ONLY = ["ask_user", "ask_user_reply"];
// Settings a person changed, kept per server (localStorage is per origin) until reset.
const SETTINGS_KEY = "segresearch.settings.v1";

export async function loadSchema() {
  const found = await getJson("/assistants/search", { method: "POST", json: { graph_id: GRAPH, limit: 20 } });
  const a = found.find((x) => x.metadata && x.metadata.created_by === "system") || found[0];
  if (!a) throw new Error(`no assistant for the graph '${GRAPH}'`);
  S.assistantId = a.assistant_id;
  const schemas = await getJson(`/assistants/${a.assistant_id}/schemas`);
  S.schema = schemas.context_schema || { properties: {} };
  buildForm(S.schema, serverDefaults());
}

export function serverDefaults() { return (S.info && S.info.defaults) || {}; }

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

export function saveSettings() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(changedFields())); } catch (_) { /* storage off: nothing kept */ }
}

// Server defaults, then what this browser remembers; when the server's own model does not
// answer and the recorded demo is offered, the demo's settings instead of that model.
export function startForm(fromReset) {
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
  protocolChoices();
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
// The choices that depend on the protocol follow it: with the tags (the published format)
// the model has no ask_user tool, so the question setting is off, disabled and says why.
function protocolChoices() {
  const p = field("protocol");
  const tools = !p || p.input.value === "tools";
  for (const name of TOOLS_ONLY) {
    const f = field(name);
    if (!f) continue;
    f.input.disabled = !tools;
    f.input.closest("[data-field]").classList.toggle("off", !tools);
    f.input.title = tools ? f.input.title.replace(/ \(tool calls only\)$/, "") : f.input.title.replace(/( \(tool calls only\))?$/, " (tool calls only)");
    if (!tools && f.t.kind === "bool") f.input.checked = false;
  }
}

$("settings").addEventListener("change", () => { protocolChoices(); saveSettings(); modelNote(); });
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
export function collectContext() {
  const ctx = {};
  const problems = [];
  for (const f of S.fields) {
    const { name, input, t, def } = f;
    if (input.disabled) continue;  // not for this protocol: the server's default stands
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
