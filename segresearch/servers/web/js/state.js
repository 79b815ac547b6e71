// What every part of the page shares: the graph it runs and the one object that holds the
// page's state (the server's answers, the form's fields, the run on screen). Modules read
// and write it here, so that no two of them hold different copies.

export const GRAPH = "seg_research";
export const S = {
  info: null, assistantId: null, schema: null, fields: [], media: null, running: false,
  thread: null, runId: null, ctx: null, abort: null, mediaInfo: null, frames: new Map(),
  keyframe: null, answerPx: null, objectsPx: null, searchMeta: new Map(), review: null, editor: null,
  blobs: new Map(), finalSeen: false, stepCount: 0, setup: null, demoPreset: false,
};
