"""The same GPT laid out as a DeepSpeed PipelineModule: embed, blocks, head and, when the
embeddings are tied, the embedding again as the output projection, its weight shared between
the first and last stages through a TiedLayerSpec. Each piece is initialised exactly as in
GPT (seeded by its position), so a pipeline run starts from the same weights as a
single-process one. Nothing here is DeepSpeed engine wiring: that lives in llmtrain/train."""
from __future__ import annotations

from functools import partial

from llmtrain.config import ModelConfig
from llmtrain.model.gpt import Block, Embedding, Head, init_weights, lm_loss, piece_seed


def _tied_logits(embedding: Embedding, x):
    return embedding.logits(x)


def gpt_pipeline(cfg: ModelConfig, num_stages: int, seed: int = 0, activation_checkpoint_interval: int = 0):
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    class Seeded:
        """Mixin: initialise the built piece with the seed of its position in the model."""

        def __init__(self, typename, index, *args, **kwargs):
            super().__init__(typename, cfg, *args, **kwargs)
            self.piece_index = index

        def build(self, log=False):
            module = super().build(log=log)
            init_weights(module, cfg, piece_seed(seed, self.piece_index))
            return module

    class Spec(Seeded, LayerSpec):
        pass

    class TiedSpec(Seeded, TiedLayerSpec):
        def __init__(self, index, forward_fn=None):
            TiedLayerSpec.__init__(self, "embed", Embedding, cfg, forward_fn=forward_fn, tied_weight_attr="wte.weight")
            self.piece_index = index

    L = cfg.n_layer
    layers = [TiedSpec(0) if cfg.tie_embeddings else Spec(Embedding, 0)]
    layers += [Spec(Block, 1 + i) for i in range(L)]
    layers.append(Spec(Head, L + 1))
    if cfg.tie_embeddings:
        layers.append(TiedSpec(0, forward_fn=_tied_logits))
    return PipelineModule(
        layers=layers,
        num_stages=num_stages,
        loss_fn=partial(lm_loss, z_loss=cfg.z_loss),
        partition_method="type:Block",
        activation_checkpoint_interval=activation_checkpoint_interval,
    )
