// Earlier runs on this server: the list, and a stored run opened and drawn as it happened.
import { getJson, setImage } from "./api.js";
import { $, el } from "./dom.js";
import { finalFromValues, finishRun, onUpdate, pendingInterrupt, resetRun, showAnswerFrame, showPause } from "./live.js";
import { S } from "./state.js";
import { failed, setStatus } from "./status.js";
import { stopText } from "./text.js";

$("history-refresh").addEventListener("click", () => loadHistory().catch(() => {}));

export async function loadHistory() {
  const threads = await getJson("/threads/search", { method: "POST", json: { limit: 30, sort_by: "updated_at", sort_order: "desc" } });
  const list = $("history");
  list.replaceChildren();
  let shown = 0;
  for (const t of threads) {
    const v = t.values || {};
    if (!v.query) continue;
    shown += 1;
    const state = t.status === "interrupted" ? (asks(t) ? "waiting for an answer" : "waiting for review") : t.status === "busy" ? "running" : v.stop_reason ? stopText(v.stop_reason) : t.status;
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

// Whether a paused thread waits for an answer to the model's question (not for a review).
function asks(t) {
  const pending = Object.values(t.interrupts || {}).flat();
  return pending.some((i) => i && i.value && i.value.type === "ask_user");
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
  if (pause) showPause(pause);
  else if (v.stop_reason) finishRun(finalFromValues(v));
  const waiting = pause && pause.type === "ask_user" ? "waiting for your answer to the model's question" : "waiting for review";
  setStatus(`A stored run (not re-run), as it happened: ${v.stop_reason === "answer" ? `answered in ${v.turns} turns` : pause ? waiting : `stopped (${v.stop_reason || st.next || "unknown"})`}.`);
  $("run-view").focus();
}

// The stored state holds the same pieces the live stream delivered: the trajectory's
// events, and messages in which each model turn (an "ai" message, with its tool calls in
// the tool-calling protocol) is followed by the observation of its step: a user turn
// (tags), or tool results, with a user turn after them when the pictures go there (tool
// calls). Replaying them through onUpdate draws the same view.
function replayValues(v) {
  const msgs = (v.messages || []).filter((m) => m && m.type !== "remove" && m.type !== "system");
  const first = msgs.find((m) => m.type === "human");
  const turns = [];  // [ai message, the messages after it until the next ai message]
  for (const m of msgs) {
    if (m.type === "ai") turns.push([m, []]);
    else if (turns.length) turns[turns.length - 1][1].push(m);
  }
  let k = -1;
  for (const ev of v.events || []) {
    if (!ev || ev.type === "start") continue;
    if (ev.type === "media") onUpdate("load_media", { events: [ev], messages: first ? [first] : [] });
    else if (ev.type === "model") {
      k += 1;
      const upd = { events: [ev], messages: turns[k] ? [turns[k][0]] : [] };
      if (ev.action && ev.action.type === "answer" && v.answer_px) {
        upd.answer_px = (v.reviewed && v.reviewed.original) || v.answer_px;
        upd.objects_px = v.objects_px;
      }
      onUpdate("reason", upd);
    } else if (ev.type === "tool" || ev.type === "feedback") onUpdate(ev.name || ev.type, { events: [ev], messages: turns[k] ? turns[k][1] : [] });
    else onUpdate("event", { events: [ev] });
  }
  if (v.answer_px) { S.answerPx = v.answer_px; showAnswerFrame(); }
}
