"""Fine-tuning runs: init_from (Hugging Face directory or blocklab run), the run's
tokenizer (its own, init_from's, checked against the model's vocabulary), and
training on flat token files streamed from disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blocklab.models import TransformerLM
from blocklab.train import checkpoint as ckpt_mod
from blocklab.train.config import ConfigError, load_train_config
from blocklab.train.distributed import World
from blocklab.train.trainer import batch_for_step, load_trained_model, train
from tests.data.tiny_hf import EOS_ID, TEXT, VOCAB, hf_model_dir, word_tokenizer

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SMALL = ["seq_len=16", "batch_size=4", "log_every=1", "eval_every=1000", "eval_batches=1",
         "warmup_steps=0"]
ONE = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model_dir(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text(TEXT)
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _first_loss_of(model: TransformerLM, config, tokens) -> float:
    """The loss the run logs at step 1: the starting model on the batch of step 0."""
    x, y = batch_for_step(tokens, config, 0, ONE)
    with torch.no_grad():
        return float(model.float()(x, targets=y))


# ----------------------------------------------------------------- config resolution

def test_the_model_comes_from_init_from(hf_dir, tmp_path):
    from blocklab.models.hf_io import read_config

    source = read_config(hf_dir)
    config = load_train_config("finetune", [f"init_from={hf_dir}"])
    assert config.model == source and config.lr == 3e-5 and config.tokenizer is None
    # A preset's model section is not the user's: ignored, not a contradiction.
    assert load_train_config("tiny", [f"init_from={hf_dir}"]).model == source
    # Keys that agree, and the free ones (a longer context), are fine.
    agreed = load_train_config("finetune", [f"init_from={hf_dir}", "model.d_model=32",
                                            "model.max_seq_len=128"])
    assert agreed.model.max_seq_len == 128 and agreed.model.d_model == 32
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text(yaml.safe_dump({"init_from": str(hf_dir), "max_steps": 5,
                                         "model": {"n_layers": 2, "norm_eps": "1e-6"}}))
    assert load_train_config(yaml_file).model == source  # 1e-6 read as the float it is


@pytest.mark.parametrize("override,match", [
    ("model.n_layers=4", r"model.n_layers=4 contradicts init_from .*whose n_layers is 2"),
    ("model.vocab_size=64", "model.vocab_size=64 contradicts"),
    ("model.preset=tiny", r"model.preset \('tiny'\) cannot be combined with init_from"),
])
def test_a_contradicting_model_key_is_refused(hf_dir, override, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config("finetune", [f"init_from={hf_dir}", override])


def test_init_from_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"init_from '.*nowhere': .* does not exist"):
        load_train_config("finetune", [f"init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="holds no model"):
        load_train_config("finetune", [f"init_from={tmp_path}"])


# --------------------------------------------------------------------- training

def test_fine_tune_a_hugging_face_directory(hf_dir, text, tmp_path):
    from blocklab.data.tokenizer import load_tokenizer
    from blocklab.data.tokens import load_token_data

    config = load_train_config("finetune", [f"init_from={hf_dir}", f"data={text}",
                                            "max_steps=3", "lr=1e-3", *SMALL])
    run = tmp_path / "run"
    result = train(config, run, progress=False)
    assert result.steps == 3 and result.resumed_from is None
    tokenizer = load_tokenizer(hf_dir)
    tokens, _ = load_token_data(text, tokenizer, val_fraction=config.val_fraction)
    source = TransformerLM.from_pretrained(hf_dir)
    # Step 0 starts from the source's weights: its loss is the source model's.
    assert _metrics(run)[0]["loss"] == pytest.approx(_first_loss_of(source, config, tokens),
                                                     abs=1e-5)
    tuned, _ = load_trained_model(run)
    assert not torch.equal(tuned.embed.weight, source.embed.weight)  # it trained
    # The run carries its tokenizer and where it came from.
    copy = load_tokenizer(run / "tokenizer")
    assert copy.encode(TEXT[:80]) == tokenizer.encode(TEXT[:80]) and copy.eos_id == EOS_ID
    record = json.loads((run / "init_from.json").read_text())
    assert record == {"init_from": str(hf_dir.resolve()), "format": "huggingface",
                      "family": "llama", "tokenizer": None}
    assert yaml.safe_load((run / "config.yaml").read_text())["init_from"] == str(hf_dir)


def test_a_longer_context_rebuilds_the_model_on_the_same_weights(hf_dir, text, tmp_path):
    config = load_train_config("finetune", [f"init_from={hf_dir}", f"data={text}",
                                            "max_steps=1", "model.max_seq_len=128", *SMALL])
    train(config, tmp_path / "run", progress=False)
    from blocklab.data.tokenizer import load_tokenizer
    from blocklab.data.tokens import load_token_data

    tokens, _ = load_token_data(text, load_tokenizer(hf_dir), val_fraction=config.val_fraction)
    source = TransformerLM.from_pretrained(hf_dir)
    assert _metrics(tmp_path / "run")[0]["loss"] == pytest.approx(
        _first_loss_of(source, config, tokens), abs=1e-5)
    assert load_trained_model(tmp_path / "run")[0].config.max_seq_len == 128


def test_fine_tune_a_blocklab_run_and_resume(text, tmp_path):
    base = load_train_config("tiny", [f"data={text}", "max_steps=2", *SMALL,
                                      "model.d_model=32", "model.n_layers=1"])
    train(base, tmp_path / "base", progress=False)
    config = load_train_config("finetune", [f"init_from={tmp_path / 'base'}", f"data={text}",
                                            "max_steps=2", "save_every=2", *SMALL])
    assert config.model.d_model == 32 and config.model.vocab_size == 256
    run = tmp_path / "ft"
    train(config, run, progress=False)
    source, _ = load_trained_model(tmp_path / "base")
    from blocklab.data.text import corpus_tokens

    tokens, _ = corpus_tokens(str(text), config.val_fraction)
    assert _metrics(run)[0]["loss"] == pytest.approx(_first_loss_of(source, config, tokens),
                                                     abs=1e-5)
    assert not (run / "tokenizer").exists()  # bytes: nothing to copy
    assert json.loads((run / "init_from.json").read_text())["format"] == "blocklab"
    # Resuming reads the checkpoint, not init_from: a moved init_from needs no flag.
    moved = load_train_config("finetune", [f"init_from={tmp_path / 'base'}", f"data={text}",
                                           "max_steps=2", "save_every=2", *SMALL])
    moved.init_from = str(tmp_path / "elsewhere")
    assert train(moved, run, resume=True, progress=False).resumed_from == 2
    moved.max_steps = 4
    assert train(moved, run, resume=True, allow_config_change=True,
                 progress=False).resumed_from == 2
    assert [r["step"] for r in _metrics(run) if "loss" in r] == [1, 2, 3, 4]


def test_resume_uses_the_run_s_tokenizer_copy(hf_dir, text, tmp_path):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(hf_dir, source)
    args = [f"init_from={source}", f"data={text}", "save_every=1", *SMALL]
    run = tmp_path / "run"
    train(load_train_config("finetune", [*args, "max_steps=1"]), run, progress=False)
    (source / "tokenizer.json").unlink()  # the source's tokenizer is gone
    (source / "tokenizer_config.json").unlink()
    result = train(load_train_config("finetune", [*args, "max_steps=2"]), run, resume=True,
                   allow_config_change=True, progress=False)
    assert result.resumed_from == 1 and (run / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="tokenizer"):  # a new run from it has none now
        train(load_train_config("finetune", [*args, "max_steps=1", "tokenizer=" + str(source)]),
              tmp_path / "new", progress=False)


def test_a_run_saved_before_the_new_keys_resumes_without_a_flag(text, tmp_path):
    args = ["tiny", [f"data={text}", "save_every=1", *SMALL, "model.d_model=32",
                     "model.n_layers=1"]]
    run = tmp_path / "old"
    train(load_train_config(args[0], [*args[1], "max_steps=1"]), run, progress=False)
    state_file = run / "ckpt-00000001" / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("tokenizer", "init_from", "data_dtype"):
        del state["config"][key]
    body = {k: v for k, v in state.items() if k != "sha256"}
    state_file.write_text(json.dumps({**body, "sha256": ckpt_mod._json_digest(body)}))
    # the same config as the run's: no --allow-config-change needed for the missing keys
    result = train(load_train_config(args[0], [*args[1], "max_steps=1"]), run, resume=True,
                   progress=False)
    assert result.resumed_from == 1


# -------------------------------------------------------------------- tokenizers

def test_a_tokenizer_larger_than_the_model_is_refused(text, tmp_path):
    small = hf_model_dir(tmp_path / "small", vocab_size=16)  # its tokenizer has 27 ids
    config = load_train_config("finetune", [f"init_from={small}", f"data={text}",
                                            "max_steps=1", *SMALL])
    with pytest.raises(ConfigError, match=r"has 27 token ids but model.vocab_size is 16"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    big = word_tokenizer(tmp_path / "big", extra_words=300)
    config = load_train_config("tiny", [f"tokenizer={big}", f"data={text}", "max_steps=1",
                                        *SMALL])
    with pytest.raises(ConfigError, match=r"has 327 token ids but model.vocab_size is 256"):
        train(config, tmp_path / "run2", progress=False)


def test_an_explicit_tokenizer_trains_a_new_model(text, tmp_path):
    tok_dir = word_tokenizer(tmp_path / "tok")
    config = load_train_config("tiny", [f"tokenizer={tok_dir}", f"data={text}", "max_steps=2",
                                        f"model.vocab_size={VOCAB}", *SMALL])
    train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="tokenizer: tokenizer '.*nope' is neither"):
        train(load_train_config("tiny", [f"tokenizer={tmp_path / 'nope'}", *SMALL]),
              tmp_path / "x", progress=False)


# ------------------------------------------------------------------- token files

def test_training_on_a_token_file(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "tokens.bin"
    rng.integers(0, 256, 20_000).astype(np.uint16).tofile(data)
    config = load_train_config("tiny", [f"data={data}", "max_steps=3", *SMALL,
                                        "model.d_model=32", "model.n_layers=1",
                                        "eval_every=3"])
    result = train(config, tmp_path / "run", progress=False)
    assert result.steps == 3 and np.isfinite(result.final_val_loss)
    # uint32 files and nanoGPT's directory layout
    nano = tmp_path / "nano"
    nano.mkdir()
    rng.integers(0, 256, 9_000).astype(np.uint32).tofile(nano / "train.bin")
    rng.integers(0, 256, 1_000).astype(np.uint32).tofile(nano / "val.bin")
    config = load_train_config("tiny", [f"data={nano}", "data_dtype=uint32", "max_steps=2",
                                        *SMALL, "model.d_model=32", "model.n_layers=1"])
    assert train(config, tmp_path / "run32", progress=False).steps == 2


def test_token_file_refusals(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 2001)
    config = load_train_config("tiny", [f"data={odd}", *SMALL])
    with pytest.raises(ConfigError, match=r"data: token file .*odd.bin has 2001 bytes, not a "
                                          r"multiple of 2"):
        config.check_data()
    with pytest.raises(ConfigError, match="data_dtype must be one of"):
        load_train_config("tiny", ["data_dtype=int8"])
    wide = tmp_path / "wide.bin"
    np.full(5000, 300, dtype=np.uint16).tofile(wide)  # ids past the byte model's 256
    config = load_train_config("tiny", [f"data={wide}", "max_steps=1", *SMALL,
                                        "model.d_model=32", "model.n_layers=1"])
    with pytest.raises(ValueError, match=r"wide.bin: token id 300 >= model.vocab_size \(256\)"):
        train(config, tmp_path / "run", progress=False)
