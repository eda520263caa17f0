"""The discrete diffusion families `mdlm`, `gidd` and `hdlm`: DiT + noise process + objective + sampler.

    family = FAMILIES["mdlm"]
    built = family.build(spec, vocab)            # Built(model=DiT, objective=DiffusionObjective, extras)
    out = family.generate(built, SampleConfig(steps=256, num_samples=4))

`built.extras` holds `process` (the DiscreteProcess), `layout` (VocabLayout), `spec` (the validated spec) and,
for HDLM, `clusters` (the loaded `mmdlm.clusters.Clusters`; save it into a model folder as `clusters/`).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel
from torch import Tensor

from mmdlm.config.model import GIDDSpec, HDLMSpec, MDLMSpec
from mmdlm.config.sample import SampleConfig
from mmdlm.diffusion.base import DiscreteProcess, VocabLayout, VocabLike
from mmdlm.diffusion.objective import DiffusionObjective
from mmdlm.families import Built
from mmdlm.models.dit import DiT
from mmdlm.sampling.ancestral import SampleOutput
from mmdlm.sampling.generate import generate as generate_samples

SpecT = TypeVar("SpecT", bound=BaseModel)


class DiscreteFamily(Generic[SpecT]):
    """Shared build/generate logic; subclasses only say which process (and vocabulary extras) they use."""

    name: str
    spec_type: type[SpecT]

    def parse(self, spec: SpecT | dict[str, Any]) -> SpecT:
        if isinstance(spec, self.spec_type):
            return spec
        if isinstance(spec, BaseModel):
            spec = spec.model_dump()
        return self.spec_type.model_validate(spec)

    def _process(self, spec: SpecT, vocab: VocabLike) -> tuple[DiscreteProcess, dict[str, Any]]:
        raise NotImplementedError

    def _model(self, spec: SpecT, process: DiscreteProcess, extras: dict[str, Any]) -> DiT:
        return DiT(spec.model, process.layout.rows)  # type: ignore[attr-defined]

    def build(self, spec: SpecT | dict[str, Any], vocab: VocabLike) -> Built:
        """A freshly initialised DiT and its objective for `vocab` (an `mmdlm.data.VocabInfo`)."""
        spec = self.parse(spec)
        process, extras = self._process(spec, vocab)
        model = self._model(spec, process, extras)
        extras.update(process=process, layout=process.layout, spec=spec)
        return Built(model=model, objective=DiffusionObjective(process), extras=extras)

    def generate(
        self,
        built: Built,
        config: SampleConfig,
        *,
        prompt_ids: Tensor | None = None,
        infill: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Sample with `config` (see `mmdlm.sampling.generate`); tokens are text ids only."""
        model = built.model
        return generate_samples(
            model,
            built.extras["process"],
            config,
            max_seq_len=model.config.max_seq_len,  # type: ignore[union-attr]
            prompt_ids=prompt_ids,
            infill=infill,
            generator=generator,
        )


class MDLMFamily(DiscreteFamily[MDLMSpec]):
    name = "mdlm"
    spec_type = MDLMSpec

    def _process(self, spec: MDLMSpec, vocab: VocabLike) -> tuple[DiscreteProcess, dict[str, Any]]:
        from mmdlm.diffusion.masked import MaskedProcess

        return MaskedProcess(VocabLayout.from_vocab(vocab), spec.process), {}


class GIDDFamily(DiscreteFamily[GIDDSpec]):
    name = "gidd"
    spec_type = GIDDSpec

    def _process(self, spec: GIDDSpec, vocab: VocabLike) -> tuple[DiscreteProcess, dict[str, Any]]:
        from mmdlm.diffusion.gidd import GIDDProcess

        return GIDDProcess(VocabLayout.from_vocab(vocab), spec.process), {}


class HDLMFamily(DiscreteFamily[HDLMSpec]):
    """HDLM. The cluster artifact at `spec.clusters` must match the vocabulary (size, and the tokenizer
    fingerprint when `vocab` carries a `tokenizer_fingerprint` attribute).

    To rebuild a saved model for loading weights, point `clusters` at the model folder's `clusters/` and set
    `embed_init="random"` (the weights are overwritten anyway, and the source checkpoint may be gone).
    """

    name = "hdlm"
    spec_type = HDLMSpec

    def _process(self, spec: HDLMSpec, vocab: VocabLike) -> tuple[DiscreteProcess, dict[str, Any]]:
        from mmdlm.clusters import Clusters
        from mmdlm.diffusion.hierarchical import HierarchicalProcess

        clusters = Clusters.load(
            spec.clusters,
            vocab_size=int(vocab.vocab_size),
            fingerprint=getattr(vocab, "tokenizer_fingerprint", None),
        )
        layout = VocabLayout.from_vocab(vocab, clusters.num_clusters)
        process = HierarchicalProcess(layout, spec.process, torch.from_numpy(clusters.cluster_map))
        return process, {"clusters": clusters}

    def _model(self, spec: HDLMSpec, process: DiscreteProcess, extras: dict[str, Any]) -> DiT:
        from mmdlm.clusters import embeddings_from_checkpoint, init_embeddings_from_clusters

        model = DiT(spec.model, process.layout.rows, cluster_head=spec.process.auxiliary_loss_weight > 0)
        if spec.embed_init == "centroids":
            clusters = extras["clusters"]
            source = clusters.manifest.get("source", {})
            tokens = clusters.token_embeddings
            if tokens is None and source.get("kind") == "checkpoint":  # folders written before they were kept
                tokens = embeddings_from_checkpoint(
                    source["path"], process.layout.vocab_size, source["tensor"]
                )
            init_embeddings_from_clusters(model.embed.weight, clusters, process.layout.vocab_size, tokens)
        return model


FAMILIES: dict[str, DiscreteFamily[Any]] = {"mdlm": MDLMFamily(), "gidd": GIDDFamily(), "hdlm": HDLMFamily()}
