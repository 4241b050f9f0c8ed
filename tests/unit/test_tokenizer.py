"""Every tokenizer embedc loads runs exactly the pipeline its saved tokenizer.json
holds, on transformers 4.57 and 5.x alike (transformers 5's XLM-R class rebuilds its
own normalizer and tokenizes trailing whitespace differently). Runs on both locks."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.legacy_stack

TRICKY = ["hello world ", "hello  world", "  leading spaces", "trailing   ", " ", "",
          "東京の人口は何人ですか", "北京是中国的首都。", "ภาษาไทยง่ายนิดเดียว", "한국어 문장입니다",
          "emoji 👍🏽 and a flag 🇩🇪", "ﬁ ligature, ＦＵＬＬ ｗｉｄｔｈ", "tab\tnew\nline", "a\u00a0b\u200bc",
          "Ελληνικά и русский", "مرحبا بالعالم", "<mask> in text <s>x</s>", "query: café  "]


def _tokenizers_ids(folder, texts, add_special_tokens=True):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=add_special_tokens)]


def test_saved_tokenizer_encodes_as_its_tokenizer_json(tiny_reference, tiny_source):
    """The reference export's tokenizer (saved by embedc twice over: preset, then
    export) gives the ids of the tokenizers library on the source's tokenizer.json."""
    from embedc.models import load_tokenizer
    from embedc.models.catalog import _e5_small_dir

    tok = load_tokenizer(tiny_reference)
    got = [tok(t)["input_ids"] for t in TRICKY]
    assert got == _tokenizers_ids(tiny_reference, TRICKY)
    assert got == _tokenizers_ids(_e5_small_dir(), TRICKY)  # the original pipeline survived both saves
    assert got[0] != got[6] and got[0][0] == 0 and got[0][-1] == 2  # <s> ... </s>: real, distinct encodings
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in TRICKY] == \
        _tokenizers_ids(tiny_reference, TRICKY, add_special_tokens=False)


def test_saved_tokenizer_keeps_the_wrapper_settings(tiny_reference):
    from embedc.models import load_tokenizer

    tok = load_tokenizer(tiny_reference)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (1, 0, 2, 250001)
    assert tok.model_max_length == 512 and tok.padding_side == "right"
    batch = tok(["x", "a longer text here"], padding=True, truncation=True, max_length=6)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0  # right-padded with <pad>
    assert len(batch["input_ids"][1]) == 6 and batch["input_ids"][1][-1] == 2  # truncation keeps </s>


def test_autotokenizer_on_an_embedc_folder_runs_the_saved_pipeline(tiny_reference):
    """sentence-transformers loads artifact tokenizers with AutoTokenizer: embedc names
    PreTrainedTokenizerFast, a class both transformers 4.57 and 5.x load from tokenizer.json as is."""
    from transformers import AutoTokenizer

    assert json.loads((tiny_reference / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(tiny_reference))
    assert [tok(t)["input_ids"] for t in TRICKY] == _tokenizers_ids(tiny_reference, TRICKY)


def test_malformed_tokenizer_json_is_a_one_line_error(tmp_path):
    from embedc.errors import ModelSourceError
    from embedc.models import load_tokenizer

    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(ModelSourceError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_shared_tokenizer_is_parsed_once_per_thread_and_follows_the_files(tiny_reference, tmp_path):
    """A build reads one tokenizer per folder content (not one per artifact: the export and every
    artifact hold copies of the same files); a rewritten folder is read again, other threads get
    their own instance, and the default stays a private object."""
    import json
    import shutil
    import threading

    from embedc.models import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tiny_reference, folder)
    first = load_tokenizer(folder, shared=True)
    assert load_tokenizer(folder, shared=True) is first
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert load_tokenizer(copy, shared=True) is first    # the same bytes elsewhere: not parsed again
    assert load_tokenizer(folder) is not load_tokenizer(folder)
    other = []
    t = threading.Thread(target=lambda: other.append(load_tokenizer(folder, shared=True)))
    t.start()
    t.join()
    assert other[0] is not first
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    again = load_tokenizer(folder, shared=True)
    assert again is not first and again.model_max_length == 77
    assert load_tokenizer(copy, shared=True) is first and first.model_max_length != 77   # the copy is unchanged
