"""Environment variables: parsed in one place (``segresearch.core.envvars``), a malformed value
is one error naming the variable, and the command line refuses it before doing anything."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from segresearch.agents.context import Context, check_environment
from segresearch.cli import main
from segresearch.core import envvars
from segresearch.core.envvars import EnvError, setting

PACKAGE = Path(envvars.__file__).resolve().parent


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("SEGRESEARCH_FRAME_SIZE", "abc", "not a whole number"),
    ("SEGRESEARCH_FRAME_SIZE", "5", "at least 28 and at most 1536"),
    ("SEGRESEARCH_MAX_TURNS", "2.5", "not a whole number"),
    ("SEGRESEARCH_REVIEW", "maybe", "not a yes/no value"),
    ("SEGRESEARCH_RUN_SEGMENTATION", "2", "not a yes/no value"),
    ("SEGRESEARCH_TEMPERATURE", "nan", "not a finite number"),
    ("SEGRESEARCH_REQUEST_TIMEOUT", "0", "above 0"),
    ("SEGRESEARCH_COORD_STYLE", "qwen4", "one of auto, qwen3, qwen25, gemini, normalized"),
    ("SEGRESEARCH_MAX_RESPONSE_TOKENS", "lots", "not a whole number"),
])
def test_a_bad_context_variable_is_an_error_naming_it(monkeypatch, name, raw, says):
    monkeypatch.setenv(name, raw)
    with pytest.raises(EnvError) as e:
        Context()
    msg = str(e.value)
    assert name in msg and repr(raw) in msg and says in msg and "\n" not in msg


def test_context_variables_that_are_fine(monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_REVIEW", "Yes")
    monkeypatch.setenv("SEGRESEARCH_FRAME_SIZE", " 512 ")
    monkeypatch.setenv("SEGRESEARCH_MAX_RESPONSE_TOKENS", "none")
    monkeypatch.setenv("SEGRESEARCH_TEMPERATURE", "")  # empty: unset
    monkeypatch.setenv("SEGRESEARCH_COORD_STYLE", "QWEN25")
    ctx = Context()
    assert ctx.review is True and ctx.frame_size == 512 and ctx.max_response_tokens is None
    assert ctx.temperature == 0.0 and ctx.coord_style == "qwen25"
    monkeypatch.setenv("SEGRESEARCH_REVIEW", "off")
    assert Context().review is False


def test_nan_is_refused_from_python_too():
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        Context(temperature=float("nan"))


@pytest.mark.parametrize(("name", "raw"), [
    ("SEGRESEARCH_MEDIA_CACHE_MB", "abc"),
    ("SEGRESEARCH_MEDIA_CACHE_MB", "0"),
    ("SEGRESEARCH_SEARCH_CACHE_BYPASS", "perhaps"),
    ("SEGRESEARCH_KB_GPU", "nah"),
    ("SEGRESEARCH_DEFAULT_DURABILITY", "never"),
])
def test_a_bad_process_setting_is_an_error_naming_it(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(EnvError, match=name):
        setting(name)
    with pytest.raises(EnvError, match=name):
        check_environment()


def test_the_media_store_reads_its_cache_size_through_the_module(monkeypatch, tmp_path,
                                                                 fresh_media_store):
    from segresearch.core import media_store

    monkeypatch.setenv("SEGRESEARCH_MEDIA_CACHE_MB", "abc")
    with pytest.raises(EnvError, match="SEGRESEARCH_MEDIA_CACHE_MB='abc'"):
        media_store.get_store()
    monkeypatch.setenv("SEGRESEARCH_MEDIA_CACHE_MB", "2")
    assert media_store.get_store().max_bytes == 2 << 20


def test_settings_a_server_rereads_fall_back_with_a_warning_but_the_cli_refuses(monkeypatch, caplog):
    from segresearch.servers.web import max_upload_bytes

    monkeypatch.setenv("SEGRESEARCH_MAX_UPLOAD_MB", "junk")
    with caplog.at_level(logging.WARNING):
        assert max_upload_bytes() == 200 << 20
    assert "SEGRESEARCH_MAX_UPLOAD_MB='junk'" in caplog.text
    with pytest.raises(EnvError, match="SEGRESEARCH_MAX_UPLOAD_MB"):
        check_environment()


def test_the_pixel_cap_is_checked_with_the_rest(monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="SEGRESEARCH_MAX_PIXELS='lots'"):
        check_environment()


@pytest.mark.parametrize(("name", "raw"), [
    ("SEGRESEARCH_MEDIA_CACHE_MB", "abc"),
    ("SEGRESEARCH_FRAME_SIZE", "abc"),
    ("SEGRESEARCH_REVIEW", "maybe"),
])
def test_the_cli_refuses_a_bad_variable_before_anything_runs(monkeypatch, tmp_path, capsys, name, raw):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, raw)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    rc = main(["run", "--media", str(img), "--query", "x", "--model", "replay:none.json"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and name in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def _environ_reads(tree: ast.AST) -> list[int]:
    """Lines that read the process environment: os.environ.get / [...], os.getenv."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("get", "getenv", "__getitem__"):
            target = ast.unparse(node.value)
            if target == "os.environ" or (node.attr == "getenv" and target == "os"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and ast.unparse(node.value) == "os.environ":
            lines.append(node.lineno)
    return lines


def test_no_module_reads_the_environment_except_envvars():
    reads = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "envvars.py":
            continue
        found = _environ_reads(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            reads[str(path.relative_to(PACKAGE))] = found
    assert reads == {}, f"read these through segresearch.core.envvars: {reads}"
