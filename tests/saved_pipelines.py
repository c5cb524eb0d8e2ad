"""Tiny diffusers pipelines saved with ``save_pretrained``, text encoders and tokenizers included.

``tiec generate --model PATH`` loads these folders as a user's would. Nothing comes from a hub:
the CLIP tokenizer's vocabulary is the 256 byte-level characters (each also as a word end) with no
merges, the T5 tokenizer's a unigram list of the same characters, and every model is random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

import tiny_pipelines

MAX_TOKENS = 16


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    chars = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def clip_text(hidden: int, *, projection: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=512,
                            eos_token_id=513, pad_token_id=513, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()


def sd(folder: Path) -> Path:
    pipe, _ = tiny_pipelines.sd()
    pipe.tokenizer = clip_tokenizer(folder / "vocab")
    pipe.text_encoder = clip_text(12)
    pipe.register_modules(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    return _save(pipe, folder / "sd")


def sdxl(folder: Path) -> Path:
    pipe, _ = tiny_pipelines.sdxl()
    tokenizer = clip_tokenizer(folder / "vocab")
    pipe.register_modules(tokenizer=tokenizer, tokenizer_2=tokenizer, text_encoder=clip_text(8, seed=1),
                          text_encoder_2=clip_text(8, projection=10, seed=2))
    return _save(pipe, folder / "sdxl")


def if_stage_1(folder: Path) -> Path:
    pipe, _ = tiny_pipelines.if_stage_1()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in sorted(ByteLevel.alphabet())]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    torch.manual_seed(3)
    encoder = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=24, d_kv=4, d_ff=16, num_layers=1,
                                      num_heads=2)).eval()
    pipe.register_modules(tokenizer=tokenizer, text_encoder=encoder)
    return _save(pipe, folder / "if")


def if_stage_2(folder: Path) -> Path:
    """Stage II as users load it, ``text_encoder=None``: stage I's prompt embeddings feed it."""
    pipe, _ = tiny_pipelines.if_stage_2()
    return _save(pipe, folder / "if-2")


def dit(folder: Path) -> Path:
    pipe, _ = tiny_pipelines.dit()
    return _save(pipe, folder / "dit")


def _save(pipe, path: Path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    return path


#: What ``tiec generate --model PATH`` runs (IF stage II needs stage I's images: see test_docs).
SAVED = {"sd": sd, "sdxl": sdxl, "if-1": if_stage_1, "dit": dit}
