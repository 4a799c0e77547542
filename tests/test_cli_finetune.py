"""End to end from the command line: fine-tune a Hugging Face directory, generate from
the run, export it, load it back in transformers with equal logits and tokens; and
``generate`` / ``export`` / ``distill`` / ``convert`` on runs with a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import blocklab
from blocklab.cli import main
from blocklab.cli.generate import continuation
from blocklab.data.tokenizer import load_tokenizer
from blocklab.train.sources import load_model as load_any
from tests.data.tiny_hf import TEXT, hf_model_dir, word_tokenizer

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SMALL = ["seq_len=16", "batch_size=4", "eval_every=1000", "eval_batches=1", "--quiet"]
PROMPT = "the quick brown"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"
    path.write_text(TEXT)
    return path


def _expected_text(model, tokenizer, prompt: str, n: int) -> str:
    """What ``generate --temperature 0`` must print, from the library directly."""
    ids = tokenizer.encode(prompt, add_bos=tokenizer.bos_id is not None)
    out = model.generate(torch.tensor([ids]), n, eos_token_id=tokenizer.eos_id)[0].tolist()
    # ids past the tokenizer's (the model's vocabulary is padded) and eos print as nothing
    new = [i for i in out[len(ids):] if i != tokenizer.eos_id and i < tokenizer.vocab_size]
    return prompt + continuation(tokenizer, ids, new)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_fine_tune_generate_export_and_load_in_transformers(family, data, tmp_path, capsys):
    hf = hf_model_dir(tmp_path / "hf", family)
    run, out = tmp_path / "run", tmp_path / "export"
    assert main(["train", f"init_from={hf}", f"data={data}", "max_steps=3", "lr=1e-2",
                 "--out", str(run), *SMALL]) == 0
    assert "step 3: loss" in capsys.readouterr().out

    ours = blocklab.load(run).eval()
    tokenizer = load_tokenizer(hf)
    # The run keeps its own copy of the HF directory's tokenizer.
    assert blocklab.load_tokenizer(run).encode(PROMPT) == tokenizer.encode(PROMPT)
    assert not torch.equal(ours.embed.weight, blocklab.load(hf).embed.weight)  # fine-tuned
    assert main(["generate", str(run), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed == _expected_text(ours, tokenizer, PROMPT, 8) + "\n"
    assert printed.startswith(PROMPT)

    assert main(["export", str(run), "--out", str(out)]) == 0
    assert f"Hugging Face {family} model with the tokenizer" in capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert theirs.config.model_type == family
    # this tokenizer's specials, not the class defaults (Llama's 1 and 2)
    for config in (theirs.config, theirs.generation_config):
        assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_id, tokenizer.eos_id)
    x = torch.randint(0, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=1e-5)
    readers = [transformers.PreTrainedTokenizerFast]  # tokenizer.json + tokenizer_config.json
    if family != "qwen2":
        # transformers 5 maps model_type qwen2 to Qwen2Tokenizer whatever tokenizer_config.json
        # says; it rebuilds a byte-level BPE from the vocabulary, which a word-level one is not
        readers.append(transformers.AutoTokenizer)
    for reader in readers:
        hf_tok = reader.from_pretrained(out)
        assert hf_tok(TEXT[:200], add_special_tokens=False)["input_ids"] == \
            tokenizer.encode(TEXT[:200])
        assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (tokenizer.bos_id, tokenizer.eos_id)
    # transformers' greedy decoding stops at this tokenizer's eos, as ours does
    ids = tokenizer.encode(PROMPT, add_bos=True)
    prompt = torch.tensor([ids])
    theirs_ids = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=8, pad_token_id=tokenizer.eos_id)
    ours_ids = ours.generate(prompt, 8, eos_token_id=tokenizer.eos_id)
    assert theirs_ids[0].tolist() == ours_ids[0].tolist()


def test_generate_from_a_hugging_face_directory_and_sampling(tmp_path, capsys):
    hf = hf_model_dir(tmp_path / "hf")
    model, tokenizer = blocklab.load(hf), load_tokenizer(hf)
    assert main(["generate", str(hf), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == _expected_text(model, tokenizer, PROMPT, 5) + "\n"
    runs = []
    for seed in (1, 1, 2):
        assert main(["generate", str(hf), "--prompt", PROMPT, "--temperature", "1.5",
                     "--top-k", "20", "--top-p", "0.95", "--seed", str(seed),
                     "--max-new-tokens", "12"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and runs[0] != runs[2]  # seeded, and the seed matters


def test_generate_from_a_byte_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny", "max_steps=2", "model.d_model=32", "model.n_layers=1",
                 "--out", str(run), *SMALL]) == 0
    capsys.readouterr()
    assert main(["generate", str(run / "ckpt-00000002"), "--prompt", "def ", "--temperature",
                 "0", "--max-new-tokens", "10"]) == 0
    from blocklab.data.tokenizer import ByteTokenizer

    expected = _expected_text(blocklab.load(run), ByteTokenizer(), "def ", 10)
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", str(run), "--prompt", ""]) == 2  # bytes: no bos to start from
    assert "--prompt gives no tokens" in capsys.readouterr().err


def test_generate_refusals(tmp_path, capsys):
    hf = hf_model_dir(tmp_path / "hf", vocab_size=16)  # smaller than its tokenizer
    capsys.readouterr()
    cases = [
        ([str(tmp_path / "none")], "not found (no such file or directory)"),
        ([str(hf)], "the tokenizer has 27 token ids but the model's vocab_size is 16"),
        ([str(hf), "--temperature", "-1"], "--temperature (-1.0) must be >= 0"),
        ([str(hf), "--top-p", "0"], "--top-p (0.0) must be in (0, 1]"),
        ([str(hf), "--tokenizer", str(tmp_path / "nope")], "tokenizer: tokenizer"),
    ]
    for argv, message in cases:
        assert main(["generate", *argv, "--prompt", "the"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("blocklab generate: error: ") and message in err, err
    (hf / "tokenizer.json").unlink()
    assert main(["generate", str(hf), "--prompt", "the"]) == 2
    assert "holds no tokenizer.json; name one with --tokenizer" in capsys.readouterr().err
    assert main(["generate", str(hf), "--prompt", "", "--tokenizer", "bytes"]) == 2
    assert "the tokenizer has 256 token ids" in capsys.readouterr().err


def test_export_refuses_a_non_empty_directory_and_overwrites_on_request(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"init_from={hf_model_dir(tmp_path / 'hf')}", f"data={data}",
                 "max_steps=1", "--out", str(run), *SMALL]) == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "is not empty (notes.txt); pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    assert main(["export", str(run), "--out", str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "notes.txt",
                     "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert main(["export", str(run), "--out", str(run)]) == 2
    assert "must not be the source" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_export_of_a_byte_run_and_of_what_cannot_be_exported(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny", "max_steps=1", "model.d_model=32", "model.n_layers=1",
                 "--out", str(run), *SMALL]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "no tokenizer files (byte tokenizer)" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.tensor([list(b"def f(x):")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, blocklab.load(run)(x), atol=1e-5, rtol=1e-5)
    sinus = tmp_path / "sinus"
    assert main(["train", "tiny", "max_steps=1", "model.d_model=32", "model.n_layers=1",
                 "model.position=sinusoidal", "--out", str(sinus), *SMALL]) == 0
    capsys.readouterr()
    assert main(["export", str(sinus), "--out", str(tmp_path / "o")]) == 2
    assert "only RoPE + RMSNorm + GLU-FFN models map" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def word_run(data: Path, tmp_path: Path) -> Path:
    """A run trained from scratch with the word tokenizer (vocabulary 32)."""
    run = tmp_path / "word-run"
    assert main(["train", "tiny", f"tokenizer={word_tokenizer(tmp_path / 'tok')}",
                 f"data={data}", "model.vocab_size=32", "model.d_model=32",
                 "model.n_kv_heads=4", "max_steps=2", "--out", str(run), *SMALL]) == 0
    return run


def test_distill_from_a_run_with_a_tokenizer(word_run, data, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(word_run), "--student-preset", "tiny",
                 "--student-d-model", "16", "--student-layers", "1", "--corpus", str(data),
                 "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
                 "--out", str(out)]) == 0
    student = load_any(out)
    assert student.config.vocab_size == 32  # the teacher's tokens, not bytes
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "the fox", "--temperature", "0",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the fox")


def test_convert_a_run_with_a_tokenizer(word_run, tmp_path, capsys):
    from blocklab.data.tokens import load_token_data
    from blocklab.train.loop import evaluate_lm

    out = tmp_path / "mqa"
    assert main(["convert", str(word_run), "--kv-heads", "1", "--out", str(out),
                 "--uptrain-steps", "1", "--eval-batches", "1", "--quiet"]) == 0
    report = json.loads((out / "convert.json").read_text())
    tokenizer = load_tokenizer(word_run / "tokenizer")
    _, val = load_token_data(report["train"]["data"], tokenizer)
    # the source was scored on the run's own tokens (words), not on bytes
    expected = evaluate_lm(blocklab.load(word_run), val, batch_size=4, seq_len=16, max_batches=1)
    assert report["val_loss"]["source"] == pytest.approx(expected, rel=1e-6)
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_convert_a_token_file_run(tmp_path):
    data = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 256, 8000).astype(np.uint16).tofile(data)
    run = tmp_path / "run"
    assert main(["train", "tiny", f"data={data}", "max_steps=1", "model.d_model=32",
                 "model.n_kv_heads=4", "--out", str(run), *SMALL]) == 0
    assert main(["convert", str(run), "--kv-heads", "2", "--out", str(tmp_path / "g"),
                 "--uptrain-steps", "1", "--eval-batches", "1", "--quiet"]) == 0
    report = json.loads((tmp_path / "g" / "convert.json").read_text())
    assert np.isfinite(report["val_loss"]["uptrained"])


def test_train_needs_a_preset_or_init_from(tmp_path, capsys):
    for argv in (["train", "--out", str(tmp_path / "a")],
                 ["train", "lr=1e-3", "--out", str(tmp_path / "b")]):
        assert main(argv) == 2
        assert "give a preset or CONFIG.yaml, or init_from=PATH" in capsys.readouterr().err
    assert main(["train", f"init_from={tmp_path / 'nowhere'}", "--out", str(tmp_path / "c")]) == 2
    assert "init_from" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_distill_and_convert_take_a_hugging_face_directory(tmp_path, capsys):
    hf = hf_model_dir(tmp_path / "hf")
    data = tmp_path / "long.txt"
    data.write_text(" ".join([TEXT] * 10))
    assert main(["convert", str(hf), "--kv-heads", "1", "--out", str(tmp_path / "mqa"),
                 "--data", str(data), "--eval-batches", "1", "--quiet"]) == 0
    converted = load_any(tmp_path / "mqa")
    assert converted.config.kv_heads == 1
    assert load_tokenizer(tmp_path / "mqa" / "tokenizer").eos_id == load_tokenizer(hf).eos_id
    assert main(["distill", "--teacher", str(hf), "--student-preset", "tiny",
                 "--student-d-model", "16", "--student-layers", "1", "--corpus", str(data),
                 "--steps", "1", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
                 "--out", str(tmp_path / "student")]) == 0
    assert load_any(tmp_path / "student").config.vocab_size == \
        blocklab.load(hf).config.vocab_size
