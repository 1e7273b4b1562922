"""A byte-level tokenizer for models built without pretrained weights.

Random-weight models (the ``-tiny`` test configs, or a paper-size architecture built for a
benchmark) have no tokenizer files to load. Every UTF-8 string maps onto 256 byte tokens
plus three specials, so any text is representable and the vocabulary stays tiny. It is a
regular ``PreTrainedTokenizerFast``: ``save_pretrained`` / ``AutoTokenizer`` round-trip it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<pad>"
BYTE_VOCAB_SIZE = 259  # 256 byte tokens + BOS, EOS, PAD


def byte_level_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer: lower-cased (as CLIP), ``BOS text EOS``, right padding."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for special in (BOS, EOS, PAD):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="right",
    )


IMAGE_TOKEN = "<image>"
MLLM_BYTE_VOCAB_SIZE = BYTE_VOCAB_SIZE + 1  # + the image placeholder


def byte_level_mllm_tokenizer(context_length: int) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer plus LLaVA's ``<image>`` placeholder (id 259).

    ``context_length`` is the language model's window (whole prompts, not only user text).
    """
    tokenizer = byte_level_tokenizer(context_length)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer
