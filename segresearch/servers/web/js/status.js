// How the run stands, wherever the person is on the page: the status line, the badge, the
// banner, the line beside the Run button, and how a run's end or failure is told.
import { AuthError } from "./api.js";
import { $, announce, reducedMotion } from "./dom.js";
import { S } from "./state.js";
import { pageText } from "./text.js";

export function setStatus(text) { $("status").textContent = text; }

export function badge(text, kind) {
  const b = $("run-badge");
  b.hidden = false;
  b.textContent = text;
  b.className = "badge " + (kind || "");
}

export function showBanner(text, note) {
  const b = $("run-error");
  b.hidden = false;
  b.className = note ? "banner note" : "banner";
  b.textContent = text;
}

export function setRunning(on) {
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

export function failed(e) {
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

// The end of a run, wherever the person is on the page: the run's sticky header, the
// line beside the Run button, and the screen reader all say it.
export function ended(text, ok) {
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
