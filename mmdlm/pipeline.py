"""`load_pretrained(dir) -> Pipeline`: a trained model folder back as network + objective + tokenizer.

A `model` folder (docs/ARCHITECTURE.md):
    config.json          {"_class_name": "mmdlm.Pipeline", "mmdlm_version", "family", "model", "process",
                          "vocab", "train", "trained"}; "model" is the network config, "process" every other
                          field of the family spec (noise process, cluster path, ...), "trained" the step and
                          tokens seen when it was saved
    model.safetensors    the weights to use (EMA weights when training kept an EMA)
    raw.safetensors      the raw (non-EMA) weights, only when they differ
    tokenizer/           the dataset's tokenizer folder
    clusters/            HDLM only: the cluster artifact, referenced as "clusters" (relative) in config.json

The folder is written to a temporary sibling and renamed, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file, save_file
from torch import Tensor

import mmdlm
from mmdlm.config.sample import SampleConfig
from mmdlm.config.train import ModelSpec
from mmdlm.data.vocab import VocabInfo
from mmdlm.families import Built, get_family
from mmdlm.precision import effective_precision

CLASS_NAME = "mmdlm.Pipeline"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RAW_WEIGHTS_NAME = "raw.safetensors"

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelSpec)


def spec_to_json(spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a family spec into ("model": network config, "process": every other field except family)."""
    data = spec.model_dump(mode="json")
    data.pop("family")
    model = data.pop("model")
    return model, data


def spec_from_json(
    family: str, model: Mapping[str, Any], process: Mapping[str, Any], root: Path | None
) -> Any:
    data = {"family": family, "model": dict(model), **process}
    clusters = data.get("clusters")
    if root is not None and isinstance(clusters, str) and not Path(clusters).is_absolute():
        data["clusters"] = str(root / clusters)
    return _SPEC_ADAPTER.validate_python(data)


def _save_clusters(extras: Mapping[str, Any], spec: Any, out: Path) -> bool:
    """Copy the HDLM cluster artifact into out/clusters; True when there was one."""
    clusters = extras.get("clusters")
    if clusters is not None and hasattr(clusters, "save"):
        clusters.save(out / "clusters")
        return True
    source = getattr(spec, "clusters", None)
    if source:
        shutil.copytree(Path(source), out / "clusters")
        return True
    return False


def save_model_folder(
    out_dir: str | Path,
    *,
    spec: Any,
    vocab: VocabInfo,
    state_dict: Mapping[str, Tensor],
    tokenizer_dir: str | Path | None = None,
    tokenizer: Any = None,
    raw_state_dict: Mapping[str, Tensor] | None = None,
    extras: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    trained: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete `model` folder atomically (replacing an existing one) and return its path."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_cfg, process_cfg = spec_to_json(spec)
    if _save_clusters(extras or {}, spec, tmp):
        process_cfg["clusters"] = "clusters"
    config = {
        "_class_name": CLASS_NAME,
        "mmdlm_version": mmdlm.__version__,
        "family": spec.family,
        "model": model_cfg,
        "process": process_cfg,
        "vocab": vocab.model_dump(mode="json"),
        "train": dict(train) if train is not None else None,
        "trained": dict(trained) if trained is not None else None,
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS_NAME))
    if raw_state_dict is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in raw_state_dict.items()}, str(tmp / RAW_WEIGHTS_NAME)
        )
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    elif tokenizer_dir is not None:
        shutil.copytree(Path(tokenizer_dir), tmp / "tokenizer")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@dataclass
class GenerationResult:
    """ids: (N, L) int64 text ids; texts: decoded with the model's tokenizer (special tokens removed)."""

    ids: Tensor
    texts: list[str]
    nfe: int
    elapsed_s: float
    steps: int
    config: SampleConfig


@dataclass
class Pipeline:
    """A loaded model: `built.model` (network), `built.objective`, the tokenizer, the spec and vocabulary."""

    family: str
    spec: Any
    vocab: VocabInfo
    built: Built
    tokenizer: Any = None
    train_config: dict[str, Any] | None = None
    trained: dict[str, Any] | None = None
    path: Path | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.built.model

    @property
    def objective(self) -> Any:
        return self.built.objective

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Pipeline:
        self.built.model.to(device)
        return self

    def encode_prompt(self, prompt: str) -> Tensor:
        """A text prompt as the start of a new document: BOS followed by its tokens, (P,) int64."""
        if self.tokenizer is None:
            raise ValueError("this model folder has no tokenizer/; pass prompt_ids instead of a text prompt")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return torch.tensor([self.vocab.bos_id, *ids], dtype=torch.long)

    def decode(self, ids: Tensor) -> list[str]:
        if self.tokenizer is None:
            return [" ".join(map(str, row)) for row in ids.tolist()]
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    @torch.no_grad()
    def generate(
        self,
        config: SampleConfig | None = None,
        *,
        prompt: str | None = None,
        prompt_ids: Tensor | None = None,
        infill: Tensor | None = None,
        precision: str = "fp32",
        generator: torch.Generator | None = None,
    ) -> GenerationResult:
        """Sample with the family's sampler (diffusion: ancestral T steps; AR: KV-cached decoding).

        precision `bf16` runs the network under bf16 autocast; the sampler's probabilities and draws keep
        the dtype `config.float64` asks for.
        """
        config = config or SampleConfig()
        context = (self.trained or {}).get("seq_len")
        if config.seq_len is None and context:
            # positions past the training rows were never trained: sample at the training context by default
            config = config.model_copy(update={"seq_len": min(int(context), self.model.config.max_seq_len)})
        if prompt is not None:
            if prompt_ids is not None:
                raise ValueError("give either prompt (text) or prompt_ids, not both")
            prompt_ids = self.encode_prompt(prompt)
        if precision not in {"fp32", "bf16"}:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        precision = effective_precision(precision, self.device)  # type: ignore[arg-type]
        family = get_family(self.family)
        self.model.eval()
        amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast(self.device.type, enabled=False)
        )
        with amp:
            out = family.generate(  # type: ignore[attr-defined]
                self.built, config, prompt_ids=prompt_ids, infill=infill, generator=generator
            )
        return GenerationResult(
            ids=out.tokens,
            texts=self.decode(out.tokens),
            nfe=out.nfe,
            elapsed_s=out.elapsed_s,
            steps=out.steps,
            config=config,
        )

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_model_folder(
            out_dir,
            spec=self.spec,
            vocab=self.vocab,
            state_dict=self.model.state_dict(),
            tokenizer=self.tokenizer,
            extras=self.built.extras,
            train=self.train_config,
            trained=self.trained,
        )


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", weights: str = "model") -> Pipeline:
    """Rebuild a `model` folder. `weights="raw"` loads raw.safetensors (the non-EMA weights) if present."""
    root = Path(path)
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{root} is not a model folder: {CONFIG_NAME} is missing")
    config = json.loads(config_path.read_text())
    if config.get("_class_name") != CLASS_NAME:
        raise ValueError(
            f"{config_path}: _class_name is {config.get('_class_name')!r}, expected {CLASS_NAME!r}"
        )
    family = config["family"]
    spec = spec_from_json(family, config["model"], config.get("process") or {}, root)
    vocab = VocabInfo.model_validate(config["vocab"])
    # the saved weights overwrite any initialisation, so never re-derive it from a source checkpoint
    build_spec = spec.model_copy(update={"embed_init": "random"}) if hasattr(spec, "embed_init") else spec
    built = get_family(family).build(build_spec, vocab)
    name = {"model": WEIGHTS_NAME, "raw": RAW_WEIGHTS_NAME}.get(weights)
    if name is None:
        raise ValueError(f"weights must be 'model' or 'raw', got {weights!r}")
    if not (root / name).is_file():
        raise FileNotFoundError(f"{root / name} does not exist")
    built.model.load_state_dict(load_file(str(root / name)))
    built.model.to(device).eval()
    tokenizer = None
    if (root / "tokenizer").is_dir():
        from mmdlm.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(root / "tokenizer")
    return Pipeline(
        family=family,
        spec=spec,
        vocab=vocab,
        built=built,
        tokenizer=tokenizer,
        train_config=config.get("train"),
        trained=config.get("trained"),
        path=root,
    )
