"""Tiny random-weight ERNIE-4.5 checkpoints in Hugging Face layout, built at test time.

A few layers, a small hidden size, a byte-level BPE tokenizer trained on a few sentences. No
downloads. The weights are drawn with a large init range so the next-token distribution is
peaked: greedy decoding is then stable across runtimes (ties would make any comparison flaky).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "what is the balance of my account today",
    "how do I reset the card pin at the bank",
    "edge models answer easy questions and the cloud answers the rest",
    "héllo wörld, ünïcode tëxt çan be tokenized too",
]
#: Special tokens in id order: pad 0, bos 1, eos 2 (the Ernie4_5Config defaults).
SPECIALS = ["<pad>", "<s>", "</s>"]


def make_tokenizer(out_dir: Path, vocab_size: int = 384) -> int:
    """A byte-level BPE tokenizer saved as tokenizer.json + tokenizer_config.json; its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "model_max_length": 4096, "add_bos_token": False,
    }))
    return tokenizer.get_vocab_size()


def make_tiny_ernie(out_dir: Path, *, moe: bool = False, seed: int = 0, layers: int = 2,
                    hidden: int = 64, max_positions: int = 256, init_range: float = 0.3) -> Path:
    """Save a random-weight Ernie4_5ForCausalLM (or the MoE variant) with its tokenizer to out_dir."""
    import torch
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM, Ernie4_5Config, Ernie4_5ForCausalLM, GenerationConfig

    vocab = make_tokenizer(out_dir)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                  max_position_embeddings=max_positions, initializer_range=init_range,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    if moe:
        config = Ernie4_5_MoeConfig(**common, moe_num_experts=4, moe_k=2, moe_intermediate_size=hidden,
                                    moe_layer_start_index=1, moe_num_shared_experts=0)
        model = Ernie4_5_MoeForCausalLM(config)
    else:
        model = Ernie4_5ForCausalLM(Ernie4_5Config(**common))
    model.eval()
    model.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_ernie(tmp_path_factory) -> Path:
    """One tiny dense ERNIE-4.5 checkpoint per test session."""
    return make_tiny_ernie(tmp_path_factory.mktemp("tiny-ernie"))


@pytest.fixture(scope="session")
def tiny_edge(tiny_ernie, tmp_path_factory) -> Path:
    """The tiny checkpoint exported for the edge (fp32), once per test session."""
    from edgecascade.offline.llm_export import export_llm

    return export_llm(tiny_ernie, tmp_path_factory.mktemp("tiny-edge") / "edge").out_dir


@pytest.fixture(scope="session")
def long_cloud(tmp_path_factory) -> Path:
    """A different tiny ERNIE-4.5 with a 4096-token context: the cloud for streaming tests (long
    enough generations to cancel, or to outlast a deadline)."""
    return make_tiny_ernie(tmp_path_factory.mktemp("long-cloud"), seed=1, max_positions=4096)


def run_host(model_dir, body, **host_args):
    """`await body(host)` with a loaded cloud `CausalLMHost` on `model_dir`, closed afterwards."""
    import asyncio

    from cloud_router.llm_host import CausalLMHost

    async def main():
        host = CausalLMHost(model_dir, **host_args)
        await host.load()
        try:
            return await body(host)
        finally:
            await host.close()

    return asyncio.run(main())
