// Starting, stopping and continuing runs: the Run and Stop buttons and the reply to a review
// or to the model's question.
import { api, getJson } from "./api.js";
import { $, announce, bringIntoView } from "./dom.js";
import { collectContext, saveSettings } from "./form.js";
import { loadHistory } from "./history.js";
import { resetRun, streamRun } from "./live.js";
import { hideQuestion, questionRefused, questionReply } from "./question.js";
import { editedReply, replyRefused } from "./review.js";
import { GRAPH, S } from "./state.js";
import { failed, setRunning, setStatus } from "./status.js";

const STREAM_MODES = ["updates", "custom"];

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

$("stop-button").addEventListener("click", async () => {
  if (S.abort) S.abort.abort();
  if (S.thread && S.runId) {
    try { await api(`/threads/${S.thread}/runs/${S.runId}/cancel`, { method: "POST" }); } catch (_) { /* gone */ }
  }
});

export async function resume(value) {
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
    hideQuestion();
    await streamRun({ assistant_id: S.assistantId || GRAPH, command: { resume: value }, context: S.ctx,
                      stream_mode: STREAM_MODES });
  } catch (e) {
    // 422: the server refused the reply before running anything; the thread still waits
    // for one, so the editor comes back as it was, with the server's reason.
    if (e.status === 422 && pause && pause.type === "ask_user") questionRefused(pause, e.message);
    else if (e.status === 422 && pause) replyRefused(pause, editor, e.message);
    else failed(e);
  } finally {
    setRunning(false);
    loadHistory().catch(() => {});
  }
}

$("review-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const reply = editedReply();
  if (reply) resume(reply);
});
// The answer to the model's question goes as it was typed: the server (and the node) say
// when it cannot be taken, and the box stays for another try.
$("question-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (S.review && S.review.type === "ask_user") resume(questionReply());
});
$("review-accept").addEventListener("click", () => resume("accept"));
$("review-reject").addEventListener("click", () => resume("reject"));
