// Small helpers for the page's own elements: finding, making, announcing, scrolling and
// drawing the answer's box and point (the keyframe view and the review editor draw the same).

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

export function announce(text) {
  // cleared first so that the same words twice are still read out
  const a = $("announce");
  a.textContent = "";
  setTimeout(() => { a.textContent = text; }, 30);
}

export function reducedMotion() { return window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches; }

// Scrolls only when the element's top is not already in the upper part of the window: a
// person who can see it keeps their place.
export function bringIntoView(elem) {
  const r = elem.getBoundingClientRect();
  if (r.top >= 0 && r.top < window.innerHeight * 0.6) return;
  elem.scrollIntoView({ block: "start", behavior: reducedMotion() ? "auto" : "smooth" });
}

export function drawBox(g, box, point, width) {
  const lw = Math.max(2, Math.round(width / 240));
  if (box) {
    g.lineWidth = lw + 2; g.strokeStyle = "rgba(0,0,0,.6)";
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    g.lineWidth = lw; g.strokeStyle = "#00d455";
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  if (point) {
    const r = Math.max(5, Math.round(width / 90));
    g.beginPath(); g.arc(point[0], point[1], r, 0, 2 * Math.PI);
    g.fillStyle = "#ff2a2a"; g.fill();
    g.lineWidth = 2; g.strokeStyle = "#fff"; g.stroke();
  }
}
