// The page's words: what it calls each setting and value, why a run stopped, and the
// server's messages reworded for a person using the form.
import { S } from "./state.js";

// What the form calls each context field, and its help, in the words of someone trying the
// method; the schema's own title and description (developer words) go in the tooltip. A
// field missing here still shows, under its schema title (and is marked for the tests).
export const FIELD_TEXT = {
  model: ["Model", "The vision-language model that answers: the server's own, a model server's address (openai:NAME@http://host:port/v1) or a recorded run (replay:FILE)."],
  search: ["Search", "Where the model looks up what it does not know."],
  kb: ["Knowledge base", "A folder on the server with the texts (and pictures) to search, for the knowledge-base searches."],
  retriever_url: ["Retrieval server address", "For Search: retrieval server; e.g. http://127.0.0.1:8001."],
  search_cache: ["Search cache file", "A file on the server that keeps search results, so the same search is quick and gives the same results; empty or off: no cache."],
  search_cache_ttl: ["Keep cached results for (seconds)", "After this long a search is made again."],
  allow_private_urls: ["Let web image search open local addresses", "Off: pictures at private or local network addresses are not fetched."],
  text_topk: ["Text results per search", "How many text results the model reads for each search."],
  image_topk: ["Picture results per search", "How many pictures the model sees for each picture search."],
  segmenter: ["Segmenter", "What turns the answer's box and point into a mask on every frame."],
  sam2_checkpoint: ["SAM 2 weights file", "A SAM 2 checkpoint (.pt) on the server, for Segmenter: SAM 2."],
  sam2_config: ["SAM 2 configuration", "One shipped with SAM 2, e.g. configs/sam2.1/sam2.1_hiera_l.yaml; empty: chosen from the weights file's name."],
  sam2_image_size: ["SAM 2 resolution (pixels)", "0: SAM 2's own (1024); smaller is faster and coarser."],
  max_turns: ["Most searches and looks", "How many times the model may search or look closely at a frame before it must answer."],
  num_frames: ["Frames shown first", "How many frames, spread over the video, the model sees at the start."],
  frame_size: ["Frame size (pixels)", "The frames are shown to the model as squares of this side."],
  keyframe_size: ["Close-up size (pixels)", "The side of the square a frame is shown at when the model looks closely."],
  search_image_size: ["Search picture size (pixels)", "The side of the square search pictures are shown at."],
  coord_style: ["How the model writes positions", "Automatic follows the model's family: Qwen3-VL writes 0–1000 across the frame, Qwen2.5-VL pixels of the picture it saw, Gemini 0–1000 with y first; other models are asked for fractions 0–1 when they call tools."],
  protocol: ["How the model takes its steps", "Tags: the published Seg-ReSearch format, which its trained models write. Tool calls: the model's own function calling, for general chat models (hosted ones, Qwen3-VL-Instruct on a vLLM server started with tool calling on)."],
  prompt_variant: ["Instructions to the model", "With or without the search tools."],
  system_prompt_file: ["Instructions file", "A text file on the server that replaces the built-in instructions."],
  max_new_tokens: ["Longest reply (tokens)", "How much the model may write in one turn."],
  max_response_tokens: ["Longest run (tokens)", "How much the model may write over all its turns; empty: no limit."],
  temperature: ["Randomness", "0: always the most likely words; higher: more varied replies (up to 2)."],
  feedback_retries: ["Format reminders", "How many times a reply with no usable step gets a reminder of the format instead of ending the run."],
  request_timeout: ["Model time limit (seconds)", "How long one reply from the model may take."],
  search_timeout: ["Search time limit (seconds)", "How long one search may take."],
  output_dir: ["Output folder", "Where on the server this run's files go, inside the server's output folder; empty: a new folder for each run."],
  run_segmentation: ["Make masks", "Turn the answer into a mask on every frame."],
  review: ["Review the answer first", "Pause after the answer, so you can check or move the box and point before the masks are made."],
  verify_rounds: ["Rounds of checking the masks", "After the masks are made, show them to the model (the keyframe and the frames where they change most) up to this many times, to accept them or correct them with points or a box; 0: never, as published."],
  ask_user: ["Let the model ask you", "The model may ask you a question when the request is unclear; the run waits for your answer. Tool calls only."],
  ask_user_reply: ["Fixed answer to its questions", "Answer every question of the model with this text at once, without waiting (as evaluations do); empty: you answer on the page."],
};
// Plain names for the values of the fields the schema enumerates (the value itself is in
// the option's tooltip); a value missing here is shown as it is.
export const OPTION_TEXT = {
  search: { local: "Knowledge base (meaning)", bm25: "Knowledge base (keywords)", hybrid: "Knowledge base (meaning and keywords)",
            retriever: "Retrieval server", ddg: "Web: DuckDuckGo", tavily: "Web: Tavily (needs a key on the server)",
            serper: "Web: Serper (needs a key on the server)", none: "No search" },
  segmenter: { auto: "Automatic (SAM 2 when installed, else GrabCut)", sam2: "SAM 2", grabcut: "GrabCut (no model weights)", none: "None: the answer only" },
  coord_style: { auto: "Automatic (the model family's own)", qwen3: "0–1000 across the frame (Qwen3-VL)", qwen25: "Pixels (Qwen2.5-VL)",
                 gemini: "0–1000, y first (Gemini)", normalized: "Fractions 0–1 of the frame" },
  protocol: { tags: "Tags (the Seg-ReSearch models)", tools: "Tool calls (general chat models)" },
  prompt_variant: { auto: "As the Search setting says", search: "With search", no_search: "Without search" },
};
// Why a run stopped, in words.
const STOP_TEXT = {
  answer: "answered",
  no_action: "the model's last reply had no step the run could take",
  max_turns: "the model used all its searches and looks without answering (raise “Most searches and looks”)",
  max_tokens: "the model wrote as much as it may (raise “Longest run”)",
  "error:config": "a setting cannot be used",
  "error:media": "the media cannot be read",
  "error:input": "the request is incomplete",
  "error:model": "the model failed",
  "error:segment": "the masks could not be made",
};

export function fieldLabel(name) { return (FIELD_TEXT[name] || [])[0] || name; }

export function stopText(reason) { return STOP_TEXT[reason] || reason; }

export function fmtMb(mb) { return (mb >= 10 ? Math.round(mb) : Math.round(mb * 10) / 10) + " MB"; }

// Server messages are written for the command line and the API; on the page they name the
// form's fields and what to change there, not flags, variables or shell commands.
export function pageText(message) {
  const demo = S.setup && S.setup.demo;
  let m = String(message || "");
  if (/^(?:Failed to fetch|NetworkError when attempting to fetch resource\.?|Load failed|network error)$/i.test(m.trim())) {
    return "the page lost its connection to the server; is the server still running?";
  }
  m = m.replace(/The OpenAI-compatible server at (\S+) is not reachable \(([^)]*(?:\([^)]*\)[^)]*)*)\)\.[\s\S]*$/,
    (_, url, why) => `No model server answers at ${url} (${why}). Start it, or change “Model” under Settings` + (demo ? " (the recorded demo needs no server)." : "."));
  m = m.replace(/No API key for the OpenAI API[\s\S]*$/,
    "The model needs an API key that this server does not have. Ask whoever runs the server, or change “Model” under Settings.");
  m = m.replace(/(?:search backend '[^']*': )?no knowledge base configured[\s\S]*$/,
    "This search needs a knowledge base: fill in “Knowledge base” under Settings, or set “Search” to “No search”.");
  m = m.replace(/(?:search backend '[^']*': )?knowledge base folder not found: (\S+)/, "“Knowledge base”: there is no folder $1 on the server");
  m = m.replace(/the path is outside (?:the allowed roots|the output root)(?: \([^)]*\))?/g, "the path is outside the folders this server lets the page use");
  m = m.replace(/Context\.(\w+)(?:\s*\/\s*--[\w-]+)?(?:\s*\/\s*SEGRESEARCH_\w+)?/g, (all, name) => (FIELD_TEXT[name] ? `“${fieldLabel(name)}”` : all));
  m = m.replace(/`?--([a-z][\w-]*)(?:[ =](?!under)[^\s`,;)]+)?`?/g, (all, flag) => {
    const name = flag.replace(/-/g, "_");
    return FIELD_TEXT[name] ? `“${fieldLabel(name)}” under Settings` : all;
  });
  m = m.replace(/ ?\([^()]*SEGRESEARCH_[A-Z_]+[^()]*\)/g, "");  // server variables are the operator's business
  // one problem per line, as the API sends them ("context: max_turns: ..."): each names
  // the form's field by its label
  const inputs = { media: "Media", query: "What should be segmented" };
  return m.split("\n").map((line) => line.replace(/^(?:context|input): /, "")
    .replace(/^(\w+): /, (all, name) => (FIELD_TEXT[name] ? `${fieldLabel(name)}: ` : inputs[name] ? `${inputs[name]}: ` : all))).join("\n");
}
