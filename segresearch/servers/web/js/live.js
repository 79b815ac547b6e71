// The run on screen: the stream of a live run (or a stored run replayed) drawn as frames,
// reasoning turns, searches, the keyframe with the answer, segmentation and the result.
import { AuthError, blobUrl, getJson, setImage, streamEvents } from "./api.js";
import { $, drawBox, drawObject, el, objectColour } from "./dom.js";
import { hideQuestion, showQuestion } from "./question.js";
import { showReview } from "./review.js";
import { S } from "./state.js";
import { badge, ended, failed, setStatus, showBanner } from "./status.js";
import { pageText, stopText } from "./text.js";

export function imageBlocks(msg) {
  const content = msg && msg.content;
  if (!Array.isArray(content)) return [];
  return content.filter((b) => b && b.type === "image_url")
    .map((b) => (typeof b.image_url === "string" ? b.image_url : b.image_url && b.image_url.url));
}

export async function streamRun(body) {
  const ctrl = new AbortController();
  S.abort = ctrl;
  S.finalSeen = false;
  await streamEvents(`/threads/${S.thread}/runs/stream`, body, ctrl.signal, onStream);
  S.abort = null;
  if (!S.finalSeen && !S.review) afterStream();
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
    if (pause) { showPause(pause); return; }
    finishRun(finalFromValues(st.values || {}), true);
  } catch (e) { failed(e); }
}

// A paused thread's interrupt: the model's question (ask_user) or the review of its answer.
export function showPause(pause) {
  if (pause && pause.type === "ask_user") showQuestion(pause);
  else showReview(pause);
}

export function pendingInterrupt(st) {
  if (Array.isArray(st.interrupts) && st.interrupts.length) return st.interrupts[0].value;
  for (const t of st.tasks || []) if (t.interrupts && t.interrupts.length) return t.interrupts[0].value;
  return null;
}

export function resetRun(query) {
  S.thread = null; S.runId = null; S.mediaInfo = null; S.frames = new Map(); S.keyframe = null;
  S.answerPx = null; S.objectsPx = null; S.searchMeta = new Map(); S.review = null; S.editor = null; S.stepCount = 0;
  $("run-query").textContent = query || "";
  $("intro").hidden = true;
  $("run-error").hidden = true;
  $("run-error").textContent = "";
  for (const id of ["frames-panel", "steps-panel", "keyframe-panel", "review-panel", "question-panel", "segment-panel", "result-panel"]) $(id).hidden = true;
  $("question-reply").value = "";
  $("question-problem").textContent = "";
  for (const id of ["keyframe-objects", "segment-objects"]) { $(id).replaceChildren(); $(id).hidden = true; }
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

export function onUpdate(node, upd) {
  if (node === "__interrupt__") {
    const first = Array.isArray(upd) ? upd[0] : upd;
    if (first && first.value) showPause(first.value);
    return;
  }
  if (!upd || typeof upd !== "object") return;
  const events = (upd.events || []).filter((e) => e && e.type !== "start");
  const msgs = (upd.messages || []).filter((m) => m && m.type !== "remove");
  if ("objects_px" in upd) setObjects(upd.objects_px);
  if (upd.answer_px) { S.answerPx = upd.answer_px; showAnswerFrame(); }
  // A tool's images come in a user message (tags; tool calls to OpenAI-style models) or
  // inside the tool result (tool calls to models that take them there).
  const withImages = msgs.find((m) => (m.type === "human" || m.type === "tool") && imageBlocks(m).length);
  for (const ev of events) {
    if (ev.type === "media") showFrames(ev, msgs.find((m) => m.type === "human"));
    else if (ev.type === "model") addTurn(ev, msgs.find((m) => m.type === "ai"));
    else if (ev.type === "tool" && ev.name === "keyframe") addKeyframe(ev, withImages);
    else if (ev.type === "tool" && ev.name === "ask_user") addStep("question", "Question to the user: not asked", ev.observation || ev.error || "");
    else if (ev.type === "tool") addSearch(ev, withImages);
    else if (ev.type === "feedback") addStep("turn", "Format reminder", ev.reason || "");
    else if (ev.type === "verify") addVerify(ev, withImages);
    else if (ev.type === "ask_user") addQuestion(ev);
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
  if (a.type === "answer" && Array.isArray(a.objects) && a.objects.length > 1) {
    return `answer: ${a.objects.length} objects: ` + a.objects.map((o, i) => `${i + 1}${o.label ? ` ${o.label}` : ""} box [${o.bbox_2d.join(", ")}], point [${o.point_2d.join(", ")}]`).join("; ");
  }
  if (a.type === "answer") return `answer: box [${a.bbox_2d.join(", ")}], point [${a.point_2d.join(", ")}]`;
  if (a.type === "ask_user") return `ask the user “${a.question}”` + (a.error ? ` (${a.error})` : "");
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

// The calls of a tool-calling turn as the model wrote them: name(arguments); the first is
// the one the run takes, any other is answered as not run.
function callsText(msg) {
  const calls = [...((msg && msg.tool_calls) || []), ...((msg && msg.invalid_tool_calls) || [])];
  return calls.map((c, i) => {
    const args = typeof c.args === "string" ? c.args : JSON.stringify(c.args || {});
    return `${c.name || "?"}(${args})` + (i ? " — not run" : "");
  });
}

function addTurn(ev, msg) {
  const li = addStep("turn", `Turn ${ev.turn}`, thinking(ev.response), `${ev.tokens} tokens · ${fmtS(ev.seconds)}`);
  li.dataset.kind = "turn";
  const calls = callsText(msg);
  if (calls.length) {
    li.dataset.calls = String(calls.length);
    li.append(el("p", { class: "call", text: `Tool call${calls.length > 1 ? "s" : ""}: ${calls.join("; ")}` }));
  }
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

export function showAnswerFrame() {
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
  const objs = S.objectsPx;
  if (objs && objs.length > 1) {  // an answer naming several objects: each in its colour
    const s = cw / W;
    const here = objs.map((o, i) => [o, i]).filter(([o]) => o.keyframe === kf.fid && o.bbox_2d);
    for (const [o, i] of here) drawObject(g, i, o.bbox_2d.map((v) => v * s), o.point_2d && o.point_2d.map((v) => v * s), o.label, cw);
    const elsewhere = objs.length - here.length;
    caption += `; the answer names ${objs.length} objects, each in its own colour (listed below)` +
      (elsewhere ? `, ${elsewhere} of them on other frames` : "") + ".";
    canvas.setAttribute("aria-label", `Keyframe ${kf.fid} with ${here.length} of the answer's ${objs.length} objects`);
  } else if (px && px.keyframe === kf.fid && px.bbox_2d) {
    const s = cw / W;
    drawBox(g, px.bbox_2d.map((v) => v * s), px.point_2d && px.point_2d.map((v) => v * s), cw);
    caption += `; the answer: box [${px.bbox_2d.map(Math.round).join(", ")}] (green), point [${(px.point_2d || []).map(Math.round).join(", ")}] (red), in frame pixels.`;
    canvas.setAttribute("aria-label", `Keyframe ${kf.fid} with the answer's box and point`);
  } else {
    canvas.setAttribute("aria-label", `Keyframe ${kf.fid}`);
  }
  $("keyframe-caption").textContent = caption;
}

// The objects of an answer naming several (``objects_px``), listed by number, colour and
// label under the keyframe; a one-object answer keeps the single box and point.
function setObjects(list) {
  S.objectsPx = Array.isArray(list) && list.length > 1 ? list : null;
  const ol = $("keyframe-objects");
  ol.replaceChildren();
  ol.hidden = !S.objectsPx;
  if (!S.objectsPx) return;
  S.objectsPx.forEach((o, i) => {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = objectColour(i);
    const r = (v) => (v || []).map(Math.round).join(", ");
    const li = el("li", { "data-object": String(i + 1) }, swatch,
      el("span", { class: "label", text: o.label || `object ${i + 1}` }),
      el("span", { class: "muted", text: ` frame ${o.keyframe ?? "?"}: box [${r(o.bbox_2d)}], point [${r(o.point_2d)}]` }));
    ol.append(li);
  });
  $("keyframe-panel").hidden = false;
}

function objectName(i) {
  const o = S.objectsPx && S.objectsPx[i];
  return `object ${i + 1}` + (o && o.label ? ` (${o.label})` : "");
}

// A verify round: the frames the model was shown with its masks drawn, what it decided and why.
function addVerify(ev, msg) {
  const c = ev.correction;
  const what = ev.decision === "correct" && c ? `corrected ${objectName(c.object)} on frame ${c.frame}` : "masks accepted";
  const extra = [`${ev.turns} turn${ev.turns === 1 ? "" : "s"}`, `${ev.tokens} tokens`, fmtS(ev.seconds)].join(" · ");
  const li = addStep("verify", `Verify round ${ev.round}: ${what}`, thinking(ev.response), extra);
  li.dataset.kind = "verify";
  li.dataset.decision = ev.decision;
  const frames = ev.frames || [];
  li.append(el("p", { class: "action", text: `Shown with the masks drawn: frame${frames.length === 1 ? "" : "s"} ${frames.join(", ")}` }));
  const refs = imageBlocks(msg);
  const pics = el("div", { class: "verify-frames" });
  if (refs.length) {
    frames.forEach((fid, i) => {
      if (!refs[i]) return;
      const img = el("img", { alt: `frame ${fid} with the masks, as the model checked it` });
      setImage(img, refs[i]);
      pics.append(el("figure", {}, img, el("figcaption", { text: `frame ${fid}` })));
    });
  } else if (ev.picture && S.thread) {  // a stored run: the round's pictures from its folder
    const img = el("img", { alt: `frames ${frames.join(", ")} with the masks, as the model checked them` });
    setImage(img, `/segresearch/threads/${S.thread}/files/${ev.picture}`);
    pics.append(el("figure", { class: "sheet" }, img, el("figcaption", { text: `frames ${frames.join(", ")}` })));
  }
  if (pics.childElementCount) li.append(pics);
  if (ev.decision === "correct" && c) {
    const r = (v) => Math.round(v);
    const pts = (c.points || []).map((p, i) => `[${p.map(r).join(", ")}] (${c.labels[i] ? "on" : "off"})`);
    const parts = [pts.length ? `point${pts.length === 1 ? "" : "s"} ${pts.join(", ")}` : "", c.box ? `box [${c.box.map(r).join(", ")}]` : ""].filter(Boolean);
    li.append(el("p", { class: "action", text: `→ correction for ${objectName(c.object)} on frame ${c.frame} (frame pixels): ${parts.join("; ")}; the masks are made again` }));
  } else {
    li.append(el("p", { class: "action", text: "→ accepted: the masks stand" }));
  }
  if (ev.note) li.append(el("p", { class: "note", text: ev.note }));
}

// A question the model asked and the reply it got (a person's, or the run's fixed one).
function addQuestion(ev) {
  const li = addStep("question", "Question to the user", "", fmtS(ev.seconds));
  li.dataset.kind = "question";
  li.dataset.auto = String(!!ev.auto);
  li.append(el("p", { class: "think", text: `The model asks: ${ev.question}` }),
            el("p", { class: "reply", text: `${ev.auto ? "Answered automatically (the run's fixed reply)" : "The user answered"}: ${ev.reply}` }));
  hideQuestion();
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
  const ul = $("segment-objects");
  ul.replaceChildren();
  const objs = Array.isArray(ev.objects) ? ev.objects : [];
  ul.hidden = objs.length < 2;
  objs.forEach((o, i) => {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = objectColour(i);
    const area = o.keyframe_area === null || o.keyframe_area === undefined ? "no mask on its keyframe" : `${o.keyframe_area} px on its keyframe`;
    const reached = o.reached === null || o.reached === undefined ? "" : `, masks on ${o.reached} frame${o.reached === 1 ? "" : "s"}`;
    ul.append(el("li", { "data-object": String(i + 1) }, swatch, el("span", { class: "label", text: o.label || `object ${i + 1}` }),
      el("span", { class: "muted", text: `${area}${reached}` })));
  });
}

function addReviewed(ev) {
  // ``object``: the 0-based index the reply named (shown from 1, as the object lists are)
  const who = typeof ev.object === "number" && ev.object > 0 ? `object ${ev.object + 1} ` : "";
  const text = ev.decision === "edit" ? `${who}edited: box [${ev.answer_px.bbox_2d.map(Math.round).join(", ")}], point [${ev.answer_px.point_2d.map(Math.round).join(", ")}]`
    : ev.decision === "drop" ? `dropped object ${ev.object + 1}` : ev.decision;
  addStep("keyframe", "Review", text);
  $("review-panel").hidden = true;
  S.review = null;
}

export function finalFromValues(v) {
  return { type: "final", stop_reason: v.stop_reason, answer: v.answer, answer_px: v.answer_px,
           masks_dir: v.masks_dir, turns: v.turns, error: v.error, objects_px: v.objects_px };
}

// ``live``: the run just ended in this page (announced); otherwise a stored run is shown.
export function finishRun(final, live) {
  $("review-panel").hidden = true;
  hideQuestion();
  const reason = final.stop_reason || "unknown";
  if (final.objects_px) setObjects(final.objects_px);
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
  const n = S.objectsPx ? S.objectsPx.length : 0;
  $("result-title").textContent = (r.masks ? `Result: masks for ${r.masks} frame${r.masks === 1 ? "" : "s"}` : "Result") +
    (n > 1 ? ` (${n} objects: each in its own colour, the masks their union)` : "");
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
