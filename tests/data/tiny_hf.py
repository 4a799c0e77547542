"""Tiny Hugging Face directories made in the test: a word-level tokenizer with a fixed
vocabulary (``tokenizers``) and a random Llama / Mistral / Qwen2 (``transformers``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("the quick brown fox jumps over lazy dog a cat sat on mat and ran far away "
         "in sun rain big small red blue").split()
SPECIALS = ("<unk>", "<s>", "</s>")
TEXT = " ".join(WORDS[i * 7 % len(WORDS)] for i in range(600))


def word_tokenizer(directory: Path, *, bos: str | None = "<s>", eos: str | None = "</s>",
                   config: bool = True, extra_words: int = 0) -> Path:
    """A WordLevel ``tokenizer.json`` in ``directory`` -- ids: ``<unk>`` 0, WORDS from 1,
    ``extra_words`` more, then ``<s>`` and ``</s>`` last (not at 1 and 2, where
    transformers' Llama defaults put bos and eos, so that a default taken for ours shows)
    -- with a ``tokenizer_config.json`` naming bos/eos when ``config``; returns the
    directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    names = ["<unk>", *WORDS, *(f"w{i}" for i in range(extra_words)), "<s>", "</s>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
    tok.add_special_tokens(list(SPECIALS))  # already in the vocabulary: ids unchanged
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config:
        (directory / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
             "unk_token": "<unk>"}))
    return directory


def word_id(word: str) -> int:
    """The id of a word of WORDS in :func:`word_tokenizer`'s vocabulary."""
    return 1 + WORDS.index(word)


N_TOKENS = len(SPECIALS) + len(WORDS)
BOS_ID, EOS_ID = N_TOKENS - 2, N_TOKENS - 1
VOCAB = N_TOKENS + 5  # a model vocabulary padded past the tokenizer's


def hf_model_dir(directory: Path, family: str = "llama", *, vocab_size: int = VOCAB,
                 seed: int = 0) -> Path:
    """A random tiny ``family`` model saved by transformers into ``directory``, with
    the word tokenizer beside it."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                    {"sliding_window": 16}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                  {"tie_word_embeddings": True}),
    }
    config_cls, model_cls, extra = classes[family]
    config = config_cls(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        num_hidden_layers=2, intermediate_size=48, vocab_size=vocab_size,
                        max_position_embeddings=64, rope_theta=1000.0, **extra)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)  # biases and norms random too, so a dropped one shows
    model.save_pretrained(directory)
    word_tokenizer(directory)
    return directory
