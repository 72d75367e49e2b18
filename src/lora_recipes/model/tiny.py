"""A tiny random Mistral and a tokenizer trained on the spot: a real base model folder in seconds,
with no download, for tests and smoke runs (`base_model: path/to/folder`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DEFAULT_CORPUS = (
    "the movie was great and the acting was wonderful",
    "a dull , lifeless film with no wit at all",
    "Review: it is a charming journey. Sentiment: positive",
    "Review: boring and far too long. Sentiment: negative",
    "Question: what is two plus two? Answer: 4",
    '{"person": ["Ada"], "location": ["London"]}',
)


def make_tokenizer(folder: Path, corpus: Iterable[str], vocab_size: int = 384) -> None:
    """Train a byte-level BPE tokenizer (no unknown tokens on any text) and save it to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(folder)


def make_tiny_model(
    folder: str | Path,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    *,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised 2-layer Mistral and its tokenizer to `folder`; return it."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(folder, corpus, vocab_size)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    model.save_pretrained(folder)
    return folder
