// The API client: every request to the server that served the page (the LangGraph API and
// the /segresearch/ routes) goes through here, with the token and one way of reading errors.
import { S } from "./state.js";
import { askToken, token } from "./token.js";

const BASE = location.pathname.replace(/\/segresearch\/ui\/?.*$/, "");

export class AuthError extends Error {}

export async function api(path, opts = {}) {
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

export function detailText(body) {
  let d = body && (body.detail ?? body.message ?? body.error);
  if (d === undefined || d === null) return "";
  if (Array.isArray(d)) d = d.map((x) => (typeof x === "string" ? x : x.msg || JSON.stringify(x))).join("\n");
  return typeof d === "string" ? d : JSON.stringify(d);
}

export async function httpError(res) {
  let text = "";
  try { text = detailText(await res.json()); } catch (_) { /* not JSON */ }
  const e = new Error(text || `${res.status} ${res.statusText}`);
  e.status = res.status;
  return e;
}

export async function getJson(path, opts) {
  const res = await api(path, opts);
  if (!res.ok) throw await httpError(res);
  return res.json();
}

// Images and files are fetched with the token (an <img src> cannot send a header) and shown
// from blob URLs, cached per path: the same frame appears in several places.
export function blobUrl(path) {
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

export function setImage(img, url) {
  if (typeof url === "string" && url.startsWith("data:")) { img.src = url; return Promise.resolve(img); }
  const path = refPath(url) || url;
  return blobUrl(path).then((u) => new Promise((resolve) => {
    img.onload = () => resolve(img);
    img.onerror = () => resolve(img);
    img.src = u;
  })).catch(() => img);
}

export function uploadFile(file, prog) {
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

// The stream of a run as server-sent events: each complete block is handed to ``onEvent`` as
// (event name, parsed data); a block that is not JSON is skipped, and an error in the
// handler is logged rather than ending the stream, so one bad event does not lose the run.
export async function streamEvents(path, body, signal, onEvent) {
  const res = await api(path, {
    method: "POST", json: body, signal, headers: { Accept: "text/event-stream" },
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
      sseBlock(block, onEvent);
    }
  }
  if (buf.trim()) sseBlock(buf, onEvent);
}

function sseBlock(block, onEvent) {
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
  try { onEvent(event, payload); } catch (e) { console.error(e); }
}
