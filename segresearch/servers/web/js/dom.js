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

// Each object of an answer naming several, in the order of the overlay's colours
// (segresearch/tools/visualize.py OBJECT_COLOURS), so the page and the files agree.
export const OBJECT_COLOURS = [[255, 64, 160], [40, 160, 255], [255, 200, 0], [0, 200, 120], [170, 90, 255], [255, 120, 40]];

export function objectColour(i) {
  const [r, g, b] = OBJECT_COLOURS[i % OBJECT_COLOURS.length];
  return `rgb(${r}, ${g}, ${b})`;
}

// One object of several: its box and point in its colour, its number and label at the box.
export function drawObject(g, i, box, point, label, width) {
  const colour = objectColour(i);
  const lw = Math.max(2, Math.round(width / 240));
  if (box) {
    g.lineWidth = lw + 2; g.strokeStyle = "rgba(0,0,0,.6)";
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    g.lineWidth = lw; g.strokeStyle = colour;
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  if (point) {
    const r = Math.max(5, Math.round(width / 90));
    g.beginPath(); g.arc(point[0], point[1], r, 0, 2 * Math.PI);
    g.fillStyle = colour; g.fill();
    g.lineWidth = 2; g.strokeStyle = "#fff"; g.stroke();
  }
  if (box) {
    const text = `${i + 1}${label ? " " + label : ""}`;
    const size = Math.max(12, Math.round(width / 48));
    g.font = `600 ${size}px system-ui, sans-serif`;
    const w = g.measureText(text).width + 8;
    const y = box[1] >= size + 6 ? box[1] - size - 6 : box[3] + 2;
    g.fillStyle = colour;
    g.fillRect(box[0], y, w, size + 6);
    g.fillStyle = "#000";
    g.fillText(text, box[0] + 4, y + size);
  }
}
