"""Defect 5: broken model folders are one line (no traceback), before any
work; a corrupted catalog model in embedc's own cache is verified against
the hashes recorded when it was built, and rebuilt."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
from click.testing import CliRunner

from rel_helpers import build_args, error_lines

from embedc.cli import cli


def _truncate(m):
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _empty(m):
    (m / "model.safetensors").write_bytes(b"")


def _garbage_header(m):
    (m / "model.safetensors").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def _garbage_json_header(m):
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 8) + b"{not json" + b"\x00" * 64)


def _garbage_tokenizer(m):
    (m / "tokenizer.json").write_text("\x00\x01 definitely not json")


def _wrong_schema_tokenizer(m):
    (m / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": []}))


def _only_config(m):
    for p in m.iterdir():
        if p.name != "config.json":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _config_list(m):
    (m / "config.json").write_text(json.dumps([{"model_type": "bert"}]))


BREAKAGES = {"truncated safetensors": (_truncate, "truncated"), "empty safetensors": (_empty, "empty"),
             "garbage safetensors header": (_garbage_header, "garbage header"),
             "garbage safetensors JSON": (_garbage_json_header, "garbage header"),
             "garbage tokenizer.json": (_garbage_tokenizer, "tokenizer.json"),
             "wrong-schema tokenizer.json": (_wrong_schema_tokenizer, "tokenizer.json"),
             "only config.json": (_only_config, "no model weights"),
             "config.json is a list": (_config_list, "config.json")}


def test_broken_model_folders_are_one_line(toy, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    for i, (name, (breakit, words)) in enumerate(BREAKAGES.items()):
        model = tmp_path / f"m{i}"
        shutil.copytree(toy, model)
        breakit(model)
        r = CliRunner().invoke(cli, ["-q", *build_args(model, corpus, tmp_path / f"o{i}", "-t", "fake-cpu", "-p",
                                                       "fp32")])
        assert r.exit_code == 1, (name, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.exception)
        lines = error_lines(r.output)
        assert len(lines) == 1 and words in lines[0], (name, r.output)
        assert not (tmp_path / f"o{i}").exists() and not any((tmp_path / "c").glob("stages/*/*")), name


def test_corrupted_catalog_model_is_verified_and_rebuilt(tmp_path, monkeypatch):
    from embedc.models import validate

    folder = tmp_path / "models" / "some-catalog-model"
    built = []

    def rebuild():
        built.append(1)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        (folder / "model.safetensors").write_bytes(b"weights" * 100)

    assert validate.ensure_catalog_folder(folder, rebuild, "x") == folder and built == [1]
    assert validate.ensure_catalog_folder(folder, rebuild, "x") and built == [1]       # verified, reused
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))                            # a flipped byte
    validate.ensure_catalog_folder(folder, rebuild, "x")
    assert built == [1, 1] and (folder / "model.safetensors").read_bytes() == b"weights" * 100


@pytest.mark.integration
def test_corrupted_random_preset_in_the_cache_is_rebuilt():
    """The real catalog path: random-tiny-xlmr's tokenizer.json garbled in embedc's cache."""
    from embedc.models import resolve_model

    path = resolve_model("random-tiny-xlmr").path
    (path / "tokenizer.json").write_text("garbage")
    again = resolve_model("random-tiny-xlmr").path
    assert json.loads((again / "tokenizer.json").read_text())["model"]


def test_a_concurrent_builds_temp_record_is_not_part_of_a_catalog_folder(tmp_path):
    """Two builds sharing a cache verify the same catalog folder while one of them writes its hash
    record (a temp file beside it for an instant): the other must see the folder as intact."""
    from embedc.models.validate import RECORD, catalog_folder_ok, record

    folder = tmp_path / "catalog-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    record(folder)
    (folder / f".{RECORD}.abc123.tmp").write_text('{"files": {}}')   # another process's write_json_atomic
    assert catalog_folder_ok(folder)


def test_two_processes_needing_the_same_catalog_folder_build_it_once(tmp_path):
    """The first use of a catalog folder by two workers at once: one builds it, the other waits for
    the lock, finds it intact and uses it (flock between two open files blocks threads too)."""
    import threading
    import time

    from embedc.models.validate import ensure_catalog_folder

    folder = tmp_path / "models" / "catalog-model"
    built, got, start = [], [], threading.Barrier(2)

    def rebuild():
        built.append(threading.current_thread().name)
        folder.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)                                   # the other worker arrives while this one writes
        (folder / "config.json").write_text('{"model_type": "bert"}')

    def use():
        start.wait()
        got.append(ensure_catalog_folder(folder, rebuild, "x"))

    workers = [threading.Thread(target=use, name=f"w{i}") for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert got == [folder, folder] and len(built) == 1, (got, built)
    assert (folder / "config.json").is_file() and not any(p.name.endswith(".tmp") for p in folder.iterdir())
