// The media the run looks at: a file uploaded from this computer, or one on the server
// picked from its folders or typed as a path.
import { getJson, uploadFile } from "./api.js";
import { $, el } from "./dom.js";
import { S } from "./state.js";
import { fmtMb, pageText } from "./text.js";

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

export async function loadLibrary() {
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
