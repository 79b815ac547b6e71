"""The serving path policy against the probes outside testers sent: home and variable
expansion, NUL, ``..`` and links out of a root, look-alike URLs, and the operator's API key
sent to an endpoint a client named. Also that the path a check accepts is the path the
graph then writes. In process, no servers (one loopback HTTP listener records headers)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from segresearch.agents.client_settings import validate_context
from segresearch.agents.context import Context, ContextError
from segresearch.agents.models import clear_model_cache, resolve_model
from segresearch.agents.path_policy import (
    ALLOWED_URLS_ENV,
    KB_ROOTS_ENV,
    MODEL_ROOTS_ENV,
    OUTPUT_ROOT_ENV,
    PathRefused,
    api_key_allowed,
    check_context_paths,
    check_input,
    media_paths,
    output_root,
    parse_endpoint,
    policy_active,
    resolve_client_path,
    resolve_model_spec,
    resolve_output,
    resolved_context,
    served_output,
    upload_root,
    url_allowed,
)
from segresearch.core.media import MEDIA_ROOTS_ENV, UPLOAD_ROOT_ENV, MediaError, open_media
from segresearch.graphs import nodes, outputs
from segresearch.graphs.seg_research import graph

T = "<thinking>ok</thinking>\n"
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>']
SECRET = "sk-operator-secret-0123456789"
# Environment a developer's shell may carry that would change what these tests see.
_CLEARED = (KB_ROOTS_ENV, MODEL_ROOTS_ENV, ALLOWED_URLS_ENV, UPLOAD_ROOT_ENV, "SEGRESEARCH_MODEL",
            "SEGRESEARCH_KB", "SEGRESEARCH_OUTPUT_DIR", "SEGRESEARCH_SEARCH_CACHE",
            "SEGRESEARCH_SYSTEM_PROMPT_FILE", "SEGRESEARCH_SAM2_CHECKPOINT",
            "SEGRESEARCH_RETRIEVER_URL", "SEGRESEARCH_OPENAI_API_KEY", "OPENAI_API_KEY",
            "OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
            "https_proxy", "all_proxy")


@pytest.fixture
def served(tmp_path, monkeypatch) -> SimpleNamespace:
    """A served deployment: media roots, an output root, a home folder holding a ``masks``
    folder worth protecting, and a secret outside every root."""
    home, root, out, outside = (tmp_path / n for n in ("home", "root", "out", "outside"))
    for d in (home / "masks", root / "kb", out, outside):
        d.mkdir(parents=True)
    (home / "masks" / "keep.png").write_bytes(b"precious")
    (home / "c.json").write_text(json.dumps(TURNS))
    (outside / "secret.txt").write_text("TOP SECRET LINE\n")
    (root / "prompt.txt").write_text("You segment. {coord_note}")
    (root / "c.json").write_text(json.dumps(TURNS))
    (root / "ckpt.pt").write_bytes(b"")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (out / "escape").symlink_to(outside, target_is_directory=True)
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(root))
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(out))
    clear_model_cache()
    yield SimpleNamespace(home=home, root=root, out=out, outside=outside)
    clear_model_cache()


def _home_untouched(home: Path) -> None:
    assert sorted(p.name for p in home.iterdir()) == ["c.json", "masks"]
    assert [p.name for p in (home / "masks").iterdir()] == ["keep.png"]


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(PathRefused) as e:
        validate_context(data)
    text = str(e.value)
    assert "\n" not in text and "TOP SECRET" not in text and "No such file" not in text
    return text


# ------------------------------------------------------------------ spelling


EXPANSIONS = ["~/x", "~", "~root/x", "sub/~/x", "sub/~other", "$HOME/x", "${HOME}/x", "%HOME%/x",
              "a$HOME", "run\x00x"]


def _client_values(served: SimpleNamespace, tail: str) -> dict[str, str]:
    """Every path field a client can send, each spelled with ``tail``."""
    root = served.root
    absolute = tail if tail.startswith(("~", "$", "%")) else f"{root}/{tail}"
    return {"output_dir": tail, "search_cache": tail, "kb": absolute,
            "system_prompt_file": absolute, "sam2_checkpoint": absolute}


@pytest.mark.parametrize("tail", EXPANSIONS)
def test_home_variables_and_nul_are_refused_in_every_context_field(served, tail):
    for name, value in _client_values(served, tail).items():
        text = _refused({name: value})
        assert text.startswith(f"{name}: ")
    for kind in ("replay", "hf"):
        value = tail if tail.startswith(("~", "$", "%")) else f"{served.root}/{tail}"
        assert _refused({"model": f"{kind}:{value}"}).startswith("model: ")
    _home_untouched(served.home)


@pytest.mark.parametrize("tail", EXPANSIONS)
def test_home_variables_and_nul_are_refused_in_media(served, tail):
    value = tail if tail.startswith(("~", "$", "%")) else f"{served.root}/{tail}"
    for media in (value, [str(served.root / "prompt.txt"), value]):
        with pytest.raises(PathRefused, match="^media: "):
            check_input({"query": "q", "media": media})
        with pytest.raises(MediaError, match="media path"):
            open_media(media)


def test_the_refusal_says_why_in_one_line(served):
    assert "'~' (a home folder) is not expanded" in _refused({"output_dir": "~/evil_out"})
    assert "environment variables" in _refused({"search_cache": "${HOME}/evil.sqlite"})
    assert "NUL byte" in _refused({"system_prompt_file": f"{served.root}/prompt.txt\x00"})


def test_nul_gives_a_clear_error_with_the_policy_off_too(served, monkeypatch, scene_dir):
    """No ValueError('embedded null byte') from deep inside pathlib, served or not."""
    for policy in (True, False):
        if not policy:
            monkeypatch.delenv(MEDIA_ROOTS_ENV)
        assert policy_active() is policy
        bad = f"{served.root}/prompt.txt\x00"
        for name in ("output_dir", "search_cache", "kb", "system_prompt_file", "sam2_checkpoint"):
            with pytest.raises(ContextError, match=f"^{name}: .*NUL"):
                validate_context({name: bad})
            with pytest.raises(ContextError, match=f"^{name}: .*NUL"):
                resolved_context(Context(model="replay:x.json", **{name: bad}))
        with pytest.raises(ContextError, match="NUL"):
            check_input({"media": bad})
        with pytest.raises(MediaError, match="NUL"):
            open_media(bad)
        with pytest.raises(MediaError, match="NUL"):
            open_media([bad])
        with pytest.raises(ContextError, match="NUL"):
            resolve_model(f"replay:{bad}")
        with pytest.raises(ContextError, match="NUL"):
            resolve_client_path(bad, "media")
        assert served_output(bad) is None
        res = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                           context={"model": f"replay:{served.root / 'c.json'}", "search": "none",
                                    "segmenter": "none", "output_dir": bad})
        assert res["stop_reason"] == "error:config" and "NUL" in res["error"]


# ------------------------------------------------------------ place (.., links)


def test_dotdot_and_links_out_of_a_root_are_refused_in_every_field(served):
    root, out, outside = served.root, served.out, served.outside
    dotdot = str(root / ".." / "outside" / "secret.txt")
    for name in ("kb", "system_prompt_file", "sam2_checkpoint"):
        for value in (dotdot, str(root / "link.txt"), str(outside / "secret.txt")):
            assert "outside the allowed roots" in _refused({name: value})
    for kind in ("replay", "hf"):
        for value in (dotdot, str(root / "link.txt")):
            assert "outside the allowed roots" in _refused({"model": f"{kind}:{value}"})
    for name in ("output_dir", "search_cache"):
        for value in ("../outside", "escape/x", str(out / "escape"), str(outside), "a/../../outside"):
            assert "outside the output root" in _refused({name: value})
    for media in (dotdot, str(root / "link.txt")):
        with pytest.raises(PathRefused, match="outside the allowed roots"):
            check_input({"media": media})


def test_narrower_roots_apply_per_kind(served, monkeypatch):
    models = served.root / "models"
    models.mkdir()
    (models / "c.json").write_text(json.dumps(TURNS))
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(models))
    monkeypatch.setenv(KB_ROOTS_ENV, str(served.root / "kb"))
    assert "SEGRESEARCH_MODEL_ROOTS" in _refused({"model": f"replay:{served.root / 'c.json'}"})
    assert "SEGRESEARCH_KB_ROOTS" in _refused({"kb": str(served.root)})
    validate_context({"model": f"replay:{models / 'c.json'}", "kb": str(served.root / "kb")})


def test_inside_values_come_back_as_the_exact_path_used(served):
    root, out = served.root, served.out
    (root / "alias.txt").symlink_to(root / "prompt.txt")
    (out / "real").mkdir()
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    assert resolve_client_path(str(root / "kb" / ".." / "prompt.txt"), "prompt") == root / "prompt.txt"
    assert resolve_client_path(str(root / "alias.txt"), "prompt") == root / "prompt.txt"
    assert resolve_client_path("job", "output") == out / "job"
    assert resolve_client_path("alias/job", "output") == out / "real" / "job"
    assert resolve_client_path(str(out / "alias"), "output") == out / "real"
    assert resolve_model_spec(f"replay:{root / 'alias.txt'}") == f"replay:{root / 'prompt.txt'}"
    ctx = resolved_context(Context(model=f"replay:{root / 'c.json'}", kb=f"{root}/kb/.",
                                   output_dir="alias/j", search_cache="off",
                                   system_prompt_file=str(root / "alias.txt")))
    assert (ctx.kb, ctx.output_dir, ctx.search_cache) == (str(root / "kb"), str(out / "real" / "j"), "off")
    assert ctx.system_prompt_file == str(root / "prompt.txt")


def test_no_output_root_means_no_client_writes(served, monkeypatch):
    monkeypatch.delenv(OUTPUT_ROOT_ENV)
    assert output_root() is None
    assert "writes no files for clients" in _refused({"output_dir": "job"})
    assert "writes no files for clients" in _refused({"search_cache": "c.sqlite"})
    validate_context({"search_cache": "off"})


def test_operator_values_stay_trusted(served, monkeypatch):
    """What the operator set in the server's environment is used as written, ``~`` too."""
    monkeypatch.setenv("SEGRESEARCH_MODEL", "replay:~/c.json")
    monkeypatch.setenv("SEGRESEARCH_RETRIEVER_URL", "http://10.0.0.5:8001")
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_DIR", "runs")
    ctx = validate_context({"model": "replay:~/c.json", "retriever_url": "http://10.0.0.5:8001",
                            "search": "retriever"})
    assert resolved_context(ctx).model == "replay:~/c.json"
    assert resolve_model_spec("replay:~/c.json") == "replay:~/c.json"
    assert resolve_model("replay:~/c.json").turns == TURNS
    assert resolve_output(ctx.output_dir) == served.out / "runs"
    _refused({"model": "replay:~/other.json"})


def test_served_output_follows_the_same_rules(served):
    out = served.out
    (out / "job").mkdir()
    assert served_output(str(out / "job")) == out / "job"
    assert served_output("job") == out / "job"
    for bad in ("~/x", "$HOME", str(out / "escape"), str(served.outside), "", 42):
        assert served_output(bad) is None


def test_public_names_still_work(served, monkeypatch):
    assert policy_active() and upload_root() is None
    monkeypatch.setenv(UPLOAD_ROOT_ENV, str(served.root / "up"))
    assert upload_root() == served.root / "up"
    assert media_paths(None) == [] and media_paths("a") == ["a"]
    check_context_paths(validate_context({}), given=set())


# ------------------------------------------------------------------------ URLs


ALLOWED = "http://gpu-box,https://api.openai.com, http://models.example:8000/v1/ ,http://bücher.example"

REFUSED_URLS = [
    "http://gpu-box.attacker.example/v1",
    "https://api.openai.com.attacker.example/v1",
    "http://gpu-box@attacker.example/v1",
    "http://attacker.example@gpu-box/v1",
    "http://user:pw@gpu-box/v1",
    "http://gpu-box:8080/v1",
    "https://gpu-box/v1",
    "http://api.openai.com/v1",
    "ftp://gpu-box/v1",
    "file:///etc/passwd",
    "http://models.example:8000/v1evil",
    "http://models.example:8000/",
    "http://models.example/v1",
    "http://models.example:8000/v1/../admin",
    "http://models.example:8000/v1/%2e%2e/admin",
    "http://models.example:8000/v1%2fx",
    "http://gpu-box\\@attacker.example/v1",
    "http://gpu-box\\.attacker.example/v1",
    "http://gpu-box#@attacker.example/",
    "http://gpu-box/v1?next=http://attacker.example",
    "http://gpu-box /v1",
    "http://gpu-box\t/v1",
    "http://gpu-box\x00.attacker.example/",
    "http://[::1/",
    "http://",
    "gpu-box/v1",
    "not a url",
    "",
]

ALLOWED_URLS = [
    "http://gpu-box",
    "http://gpu-box/v1",
    "http://GPU-Box./v1/",
    "http://gpu-box:80/v1",
    "https://api.openai.com/v1",
    "https://API.OPENAI.COM:443/v1",
    "http://models.example:8000/v1",
    "http://models.example:8000/v1/chat/completions",
    "http://xn--bcher-kva.example/x",
    "http://BÜCHER.example/x",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_look_alike_urls_are_refused(served, monkeypatch, url):
    monkeypatch.setenv(ALLOWED_URLS_ENV, ALLOWED)
    assert not url_allowed(url)
    assert _refused({"model": f"openai:m@{url}"}).startswith("model: ")
    if url:  # an empty retriever_url is the "not set" value
        assert _refused({"retriever_url": url}).startswith("retriever_url: ")


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_urls_an_entry_covers_are_allowed(served, monkeypatch, url):
    monkeypatch.setenv(ALLOWED_URLS_ENV, ALLOWED)
    assert url_allowed(url)
    validate_context({"model": f"openai:m@{url}", "retriever_url": url})


def test_endpoints_are_normalised(served):
    a, b = parse_endpoint("HTTP://Gpu-Box.:80/v1/"), parse_endpoint("http://gpu-box/v1")
    assert a == b and a.port == 80 and a.segments == ("v1",)
    assert parse_endpoint("https://x.example").port == 443
    assert parse_endpoint("http://[::1]:8000/v1").host == "::1"
    assert not parse_endpoint("http://gpu-box/v1").covers(parse_endpoint("http://gpu-box/v1evil"))


def test_openai_spec_without_a_url_is_refused(served, monkeypatch):
    monkeypatch.setenv(ALLOWED_URLS_ENV, ALLOWED)
    _refused({"model": "openai:gpt-4o"})
    _refused({"model": "openai:m@ftp://gpu-box/v1"})


# ------------------------------------------------------------------------ keys


class _HeaderRecorder:
    """A chat-completions endpoint on loopback that keeps each request's Authorization."""

    def __init__(self) -> None:
        self.auth: list[str | None] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                recorder.auth.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({
                    "id": "r", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[_HeaderRecorder]:
    r = _HeaderRecorder()
    yield r
    r.close()


def _auth_sent(spec: str, recorder: _HeaderRecorder) -> str | None:
    clear_model_cache()
    model = resolve_model(spec, timeout=10)
    model.invoke([HumanMessage(content="hi")])
    return recorder.auth[-1]


@pytest.mark.network
def test_the_operators_key_goes_only_to_the_operators_endpoints(served, monkeypatch, recorder):
    own = f"http://127.0.0.1:{recorder.port}/v1"
    other = f"http://localhost:{recorder.port}/v1"  # the same listener, another host name
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("SEGRESEARCH_MODEL", f"openai:m@{own}")
    assert _auth_sent(f"openai:m@{own}", recorder) == f"Bearer {SECRET}"
    assert _auth_sent(f"openai:other@{own}/", recorder) == f"Bearer {SECRET}"  # same endpoint
    # a URL the client named that is not the operator's: the request goes, the key does not
    assert _auth_sent(f"openai:m@{other}", recorder) == "Bearer EMPTY"
    model = resolve_model(f"openai:m@{other}")
    assert model.openai_api_key.get_secret_value() == "EMPTY"
    assert SECRET not in repr(model) and SECRET not in json.dumps(Context(model=f"openai:m@{other}").public_dict())
    # an allow-list entry is the operator's too
    monkeypatch.setenv(ALLOWED_URLS_ENV, other)
    assert _auth_sent(f"openai:m@{other}", recorder) == f"Bearer {SECRET}"
    monkeypatch.setenv(ALLOWED_URLS_ENV, f"http://localhost:{recorder.port}/v2")
    assert _auth_sent(f"openai:m@{other}", recorder) == "Bearer EMPTY"
    # local use (no policy): unchanged, the key goes wherever the caller points
    monkeypatch.delenv(MEDIA_ROOTS_ENV)
    assert _auth_sent(f"openai:m@{other}", recorder) == f"Bearer {SECRET}"


def test_key_decision_for_look_alikes(served, monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_MODEL", "openai:m@http://gpu-box:8000/v1")
    monkeypatch.setenv(ALLOWED_URLS_ENV, "https://api.openai.com")
    assert api_key_allowed("http://gpu-box:8000/v1")
    assert api_key_allowed("https://api.openai.com/v1")
    for url in ("http://gpu-box.attacker.example:8000/v1", "http://gpu-box:8000@attacker.example/v1",
                "https://api.openai.com.attacker.example/v1", "http://gpu-box:8001/v1",
                "http://gpu-box:8000/v1evil", "http://gpu-box:8000"):
        assert not api_key_allowed(url), url
    monkeypatch.setenv("SEGRESEARCH_MODEL", "openai:gpt-4o")  # the hosted default endpoint
    monkeypatch.delenv(ALLOWED_URLS_ENV)
    assert api_key_allowed(None) and api_key_allowed("https://api.openai.com/v1")
    assert not api_key_allowed("http://gpu-box:8000/v1")


# -------------------------------------------------- the check and the use agree


@pytest.fixture
def frames(served, scene_dir) -> Path:
    shutil.copytree(scene_dir / "frames", served.root / "frames")
    return served.root / "frames"


def _served_run(served: SimpleNamespace, frames: Path, **context: Any) -> dict[str, Any]:
    context = {"model": f"replay:{served.root / 'c.json'}", "search": "none", "segmenter": "none",
               **context}
    return graph.invoke({"query": "the blue square", "media": str(frames)}, context=context)


def test_the_graph_writes_where_the_check_resolved(served, frames):
    (served.out / "real").mkdir()
    (served.out / "alias").symlink_to(served.out / "real", target_is_directory=True)
    for asked in ("runs/job-1", "alias/job-2", str(served.out / "alias" / "job-3")):
        ctx = validate_context({"output_dir": asked, "segmenter": "grabcut"})
        expected = resolve_client_path(ctx.output_dir, "output")
        res = _served_run(served, frames, output_dir=asked, segmenter="grabcut")
        assert res["stop_reason"] == "answer", res.get("error")
        assert res["run_dir"] == str(expected) and res["masks_dir"] == str(expected / "masks")
        assert (expected / "trajectory.json").is_file()
        assert len(list((expected / "masks").iterdir())) == 12
    assert not (served.out / "alias" / "job-1").exists() and not (served.out / "runs" / "job-2").exists()
    _home_untouched(served.home)


@pytest.mark.parametrize("asked", ["~", "~/evil_out", "$HOME", "escape", str(Path("/") / "tmp")])
def test_a_refused_output_dir_gets_nothing_written(served, frames, asked):
    """Before, the first node refused such a folder and the last node wrote there anyway."""
    res = _served_run(served, frames, output_dir=asked, segmenter="grabcut")
    assert res["stop_reason"] == "error:config" and res["run_dir"] is None
    _home_untouched(served.home)
    assert list(served.outside.iterdir()) == [served.outside / "secret.txt"]
    assert sorted(p.name for p in served.out.iterdir()) == ["escape"]


def test_a_search_cache_is_written_where_checked(served, frames, kb_dir, monkeypatch):
    shutil.copytree(kb_dir, served.root / "kb", dirs_exist_ok=True)
    turns = [T + '<search>{"name": "text_search", "query": "Zephyr Prize"}</search>', TURNS[1]]
    (served.root / "s.json").write_text(json.dumps(turns))
    res = _served_run(served, frames, model=f"replay:{served.root / 's.json'}", search="bm25",
                      kb=str(served.root / "kb"), search_cache="cache/s.sqlite")
    assert res["stop_reason"] == "answer", res.get("error")
    assert (served.out / "cache" / "s.sqlite").is_file()
    _home_untouched(served.home)


def test_a_run_dir_a_client_wrote_into_the_state_is_not_used(served):
    ctx = Context(model="replay:x.json", output_dir="job")
    assert nodes._run_dir({}, ctx) == served.out / "job"
    assert nodes._run_dir({"run_dir": str(served.out / "job")}, ctx) == served.out / "job"
    assert nodes._run_dir({"run_dir": str(served.out / "other")}, ctx) == served.out / "other"
    for bad in (str(served.outside), str(served.out / "escape"), "~/x"):
        with pytest.raises(PathRefused, match="run_dir"):
            nodes._run_dir({"run_dir": bad}, ctx)
    run = served.out / "job"
    assert outputs._own_masks(run, str(run / "masks")) == str(run / "masks")
    assert outputs._own_masks(run, str(served.outside)) is None
