// SegResearch web page. Plain JavaScript modules, no framework, no build step, nothing
// fetched from elsewhere: it talks to the LangGraph API of the server that served it
// (threads, runs, streams, the context schema) and to the few /segresearch/ routes of the
// same server. This module starts the page; each concern has its own module:
//   api.js      requests, the token, server-sent events     token.js   the access token
//   form.js     the settings form                            media.js   upload or pick media
//   run.js      start, stop, continue a run                  live.js    the run on screen
//   review.js   the review editor                            history.js earlier runs
//   question.js the model's question to the person (ask_user)
//   status.js   status line, badge, banner                   text.js    the page's words
//   dom.js      element helpers                              state.js   the shared state
// Imports run one way: state, dom, token, api, text, status, then review and question, live, history,
// media, form, run, and main at the top.
import { AuthError, getJson } from "./api.js";
import { $ } from "./dom.js";
import { loadSchema, startForm } from "./form.js";
import { loadHistory } from "./history.js";
import { loadLibrary } from "./media.js";
import "./run.js";
import { S } from "./state.js";
import { fmtMb, pageText } from "./text.js";
import { forgetToken, setToken, token } from "./token.js";

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  setToken(t);
  S.blobs.clear();
  init();
});

$("forget-token").addEventListener("click", () => {
  forgetToken();
  location.reload();
});

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

init();
