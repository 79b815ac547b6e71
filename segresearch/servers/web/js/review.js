// The review editor: a paused run's answer on its keyframe, with the box and point to drag,
// nudge with keys or type, and the reply it makes. An answer naming several objects lists
// them: the person picks the one to drag (the others are drawn in their colours) and may
// drop any but the last; the reply then names each changed object by its index (0-based,
// as the pause's objects_px lists them). Sending the reply is the run's business (run.js);
// this module only shows the pause and checks what the person made of it.
import { setImage } from "./api.js";
import { $, announce, drawBox, drawObject, el, objectColour } from "./dom.js";
import { S } from "./state.js";
import { badge, setStatus } from "./status.js";

export function showReview(pause) {
  S.review = pause;
  badge("waiting for review", "wait");
  setStatus("Paused before segmentation: check the answer, change it if needed, then continue.");
  const px = pause.answer_px || {};
  const [W, H] = pause.frame_size || [S.mediaInfo && S.mediaInfo.width, S.mediaInfo && S.mediaInfo.height];
  const listed = Array.isArray(pause.objects_px) && pause.objects_px.length > 1 ? pause.objects_px : [{ ...px, label: null }];
  const objs = listed.map((o) => ({ fid: o.keyframe, box: (o.bbox_2d || [0, 0, W / 2, H / 2]).slice(), point: (o.point_2d || [W / 4, H / 4]).slice(), label: o.label || null, dropped: false, orig: o }));
  S.editor = { W, H, objs, cur: 0, fid: objs[0].fid, box: objs[0].box.slice(), point: objs[0].point.slice(), sel: "box", drag: null, img: null, imgFid: null };
  $("review-problem").textContent = pause.problem || "";
  $("review-panel").hidden = false;
  $("review-edit").textContent = objs.length > 1 ? "Segment these objects" : "Segment with this box";
  syncInputs();
  renderObjects();
  helpSelected();
  loadFrame();
  drawEditor();
  $("review-panel").scrollIntoView({ block: "nearest" });
  if (S.running) announce("The run is waiting for your review of the answer.");
}

// The picture of the object being edited (its keyframe), fetched once per frame.
function loadFrame() {
  const ed = S.editor;
  if (ed.imgFid === ed.fid) return;
  ed.img = null;
  ed.imgFid = ed.fid;
  const img = new Image();
  const fid = ed.fid;
  setImage(img, `/segresearch/threads/${S.thread}/frames/${fid}.jpg`).then(() => {
    if (S.editor === ed && ed.fid === fid) { ed.img = img; drawEditor(); }
  });
}

// The object being edited keeps its box and point in ``ed.box``/``ed.point``; this writes
// them back to its entry (before another is picked, and before a reply is made).
function stash() {
  const ed = S.editor;
  Object.assign(ed.objs[ed.cur], { box: ed.box.slice(), point: ed.point.slice() });
}

function objectTitle(k) {
  const o = S.editor.objs[k];
  return `Object ${k + 1}` + (o.label ? ` (${o.label})` : "");
}

export function selectObject(k) {
  const ed = S.editor;
  if (!ed || !ed.objs[k] || ed.objs[k].dropped) return;
  stash();
  ed.cur = k;
  Object.assign(ed, { fid: ed.objs[k].fid, box: ed.objs[k].box.slice(), point: ed.objs[k].point.slice(), sel: "box", drag: null });
  syncInputs();
  loadFrame();
  renderObjects();
  drawEditor();
  helpSelected();
}

function toggleDrop(k) {
  const ed = S.editor;
  const o = ed.objs[k];
  if (!o.dropped && ed.objs.filter((x) => !x.dropped).length === 1) {
    $("review-problem").textContent = "That is the last object left: press Reject to make no masks.";
    return;
  }
  $("review-problem").textContent = "";
  o.dropped = !o.dropped;
  if (o.dropped && ed.cur === k) selectObject(ed.objs.findIndex((x) => !x.dropped));
  else { renderObjects(); drawEditor(); }
}

// The list of objects (several only): pick one to edit, drop or keep each.
function renderObjects() {
  const ed = S.editor;
  const box = $("review-objects");
  box.replaceChildren();
  box.hidden = ed.objs.length < 2;
  if (box.hidden) return;
  ed.objs.forEach((o, k) => {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = objectColour(k);
    const pick = el("button", { type: "button", class: "pick", "data-object": String(k), "aria-pressed": String(k === ed.cur), text: objectTitle(k) });
    pick.disabled = o.dropped;
    pick.addEventListener("click", () => selectObject(k));
    const drop = el("button", { type: "button", class: "drop", "data-object": String(k), "aria-pressed": String(o.dropped),
                                "aria-label": `${o.dropped ? "Keep" : "Drop"} ${objectTitle(k).toLowerCase()}`, text: o.dropped ? "Keep" : "Drop" });
    drop.addEventListener("click", () => toggleDrop(k));
    box.append(el("li", { "data-object": String(k), "data-dropped": String(o.dropped) }, swatch, pick, drop));
  });
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
  ed.objs.forEach((o, k) => {  // the other objects on this frame, in their colours
    if (k !== ed.cur && !o.dropped && o.fid === ed.fid) drawObject(g, k, o.box.map((v) => v * s), o.point.map((v) => v * s), o.label, cw);
  });
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
  const which = ed.objs.length > 1 ? `${objectTitle(ed.cur)} of ${ed.objs.length}, frame` : "Frame";
  $("review-help").textContent = `${which} ${ed.fid} (${ed.W}×${ed.H} pixels). Selected: ${names[ed.sel] || ed.sel}.`;
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

// What the person made of the answer, as the review node takes it, or null (with the
// reason shown) when a box is empty or a point is outside its box: nothing is sent then.
// One object: the flat edit, as always. Several: each dropped object and each changed one
// as a decision naming its index ("accept" when nothing changed; a list for several changes).
export function editedReply() {
  const ed = S.editor;
  if (!ed) return null;
  normaliseBox();
  clampEditor();
  stash();
  const r1 = (v) => Math.round(v * 10) / 10;
  const answerOf = (o) => ({ keyframe: o.fid, bbox_2d: o.box.map(r1), point_2d: o.point.map(r1) });
  if (ed.objs.length < 2) {
    const why = invalid(ed.objs[0]);
    if (why) { $("review-problem").textContent = why; return null; }
    return answerOf(ed.objs[0]);
  }
  if (ed.objs.every((o) => o.dropped)) { $("review-problem").textContent = "Every object is dropped: press Reject to make no masks."; return null; }
  const changes = [];
  for (const [k, o] of ed.objs.entries()) {
    if (o.dropped) { changes.push({ decision: "drop", object: k }); continue; }
    const a = answerOf(o), was = o.orig || {};
    const same = a.keyframe === was.keyframe && JSON.stringify(a.bbox_2d) === JSON.stringify((was.bbox_2d || []).map(r1))
      && JSON.stringify(a.point_2d) === JSON.stringify((was.point_2d || []).map(r1));
    if (same) continue;
    const why = invalid(o);
    if (why) { selectObject(k); $("review-problem").textContent = `${objectTitle(k)}: ${why}`; return null; }
    changes.push({ decision: "edit", object: k, answer_px: a });
  }
  if (!changes.length) return "accept";
  return changes.length === 1 ? changes[0] : changes;
}

function invalid(o) {
  if (o.box[2] - o.box[0] < 1 || o.box[3] - o.box[1] < 1) return "The box is empty: drag it larger.";
  const [px, py] = o.point;
  if (px < o.box[0] || px > o.box[2] || py < o.box[1] || py > o.box[3]) return "The point must be inside the box: move it in (select it with P).";
  return null;
}

export function replyRefused(pause, editor, message) {
  showReview(pause);
  if (editor) {  // the reviewer's boxes, points and drops, not the answer's again
    const ed = S.editor;
    ed.objs = editor.objs.map((o) => ({ ...o, box: o.box.slice(), point: o.point.slice() }));
    ed.cur = editor.cur;
    Object.assign(ed, { fid: editor.fid, box: editor.box.slice(), point: editor.point.slice(), sel: editor.sel });
    if (editor.img && editor.imgFid === editor.fid) Object.assign(ed, { img: editor.img, imgFid: editor.fid });
    else loadFrame();
    syncInputs();
    renderObjects();
    drawEditor();
  }
  $("review-problem").textContent = `The server refused this reply: ${message}`;
  setStatus("The reply was refused; the run is still waiting for review.");
}
