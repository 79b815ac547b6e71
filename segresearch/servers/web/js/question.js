// The model's question to the person (the ask_user pause, tools protocol): the question, an
// answer box and why a reply was refused. Sending the answer is the run's business (run.js,
// the same resume as a review reply); this module only shows the pause and reads the box.
import { $, announce } from "./dom.js";
import { S } from "./state.js";
import { badge, setStatus } from "./status.js";

export function showQuestion(pause) {
  S.review = pause;  // the thread's pending pause, whatever its kind
  badge("waiting for your answer", "wait");
  setStatus("Paused: the model asks you a question. Answer it to continue.");
  $("review-panel").hidden = true;
  $("question-text").textContent = pause.question || "";
  $("question-problem").textContent = pause.problem ? `The reply was refused: ${plain(pause.problem)}` : "";
  $("question-panel").hidden = false;
  $("question-panel").scrollIntoView({ block: "nearest" });
  if (S.running) announce("The run is waiting for your answer to the model's question.");
  $("question-reply").focus({ preventScroll: true });
}

// The server's reasons end with how an API client replies; on the page, the box is the way.
function plain(message) { return String(message || "").replace(/;?\s*resume with the answer as text, or \{"reply": "text"\}/g, ""); }

export function questionReply() { return $("question-reply").value; }

// A reply the server refused (its 422): the box stays, with what was typed and the reason.
export function questionRefused(pause, message) {
  showQuestion(pause);
  $("question-problem").textContent = `The server refused this reply: ${plain(message)}`;
  setStatus("The reply was refused; the model is still waiting for your answer.");
}

export function hideQuestion() {
  $("question-panel").hidden = true;
  $("question-problem").textContent = "";
}

// Enter (without Shift) or Ctrl/Cmd+Enter sends; Shift+Enter makes a new line.
$("question-reply").addEventListener("keydown", (ev) => {
  if (ev.key !== "Enter" || ev.isComposing || (ev.shiftKey && !(ev.ctrlKey || ev.metaKey))) return;
  ev.preventDefault();
  $("question-form").requestSubmit();
});
