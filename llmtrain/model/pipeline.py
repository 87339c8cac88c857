"""The same GPT laid out as a DeepSpeed PipelineModule: embed, blocks, head and, when the
embeddings are tied, the embedding again as the output projection, its weight shared between
the first and last stages through a TiedLayerSpec. Each piece is initialised exactly as in
GPT (seeded by its position), so a pipeline run starts from the same weights as a
single-process one. Nothing here is DeepSpeed engine wiring: that lives in llmtrain/train."""
from __future__ import annotations

from functools import partial

from llmtrain.config import ModelConfig
from llmtrain.model.gpt import Block, Documents, Embedding, Head, init_weights, lm_loss, piece_seed


class StageDocuments:
    """The Documents of the micro-batch a stage is running, made once and shared by the stage's
    embedding and blocks, so every layer of the stage attends under the same masks (on a GPU, one
    flex-attention block mask per micro-batch and stage; made for each block, it cost a mask
    construction per layer).

    Within a stage the document ids are handed from layer to layer unchanged: the same tensor, or
    (activation checkpointing's recomputation) a detached alias of its storage. A new micro-batch,
    or ids received from the previous stage, is new storage, so ``of(ids)`` makes its Documents
    then. The last Documents is kept and holds its ids, so their storage cannot be freed and
    reused by another tensor while it is the one compared against."""

    def __init__(self):
        self.docs: Documents | None = None

    def of(self, ids) -> Documents:
        if self.docs is None or not _same_tensor(self.docs.ids, ids):
            self.docs = Documents(ids)
        return self.docs

    def keep(self, docs: Documents) -> Documents:
        self.docs = docs
        return docs


def _same_tensor(a, b) -> bool:
    """b is a, or a view of the same memory with the same layout and no in-place change since."""
    return a is b or (a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape == b.shape
                      and a.stride() == b.stride() and a._version == b._version)


class PipeEmbedding(Embedding):
    """The embedding stage. Under document masking it also hands on the document ids (B, T), an
    integer tensor, which travels between stages beside the hidden states (no gradient)."""

    def __init__(self, cfg: ModelConfig, documents: StageDocuments | None = None):
        super().__init__(cfg)
        self.sep = cfg.document_mask_token
        self.documents = documents or StageDocuments()

    def forward(self, idx):
        if self.sep is None:
            return super().forward(idx)
        docs = self.documents.keep(Documents.from_tokens(idx, self.sep))
        return super().forward(idx, positions=docs.positions), docs.ids


class PipeBlock(Block):
    """A block stage: hidden states in and out, with the document ids passed through when masking;
    its masks come from the stage's StageDocuments."""

    def __init__(self, cfg: ModelConfig, documents: StageDocuments | None = None):
        super().__init__(cfg)
        self.documents = documents or StageDocuments()

    def forward(self, inputs):
        if isinstance(inputs, tuple):
            x, ids = inputs
            return super().forward(x, None, self.documents.of(ids)), ids
        return super().forward(inputs)


class PipeHead(Head):
    def forward(self, inputs):
        return super().forward(inputs[0] if isinstance(inputs, tuple) else inputs)


def gpt_prefix(layer: int, n_layer: int) -> str | None:
    """The GPT's name prefix for the PipelineModule's layer ``layer`` (0 embed, 1..n_layer
    blocks, n_layer+1 head); None for the tied output embedding (the same weight as layer 0)."""
    if layer == 0:
        return "embed."
    if layer <= n_layer:
        return f"blocks.{layer - 1}."
    if layer == n_layer + 1:
        return "head."
    return None


def pipeline_key_to_gpt(key: str, n_layer: int) -> str | None:
    """A PipelineModule parameter name ('0.wte.weight', 'tied_modules.embed.wte.weight',
    '3.attn.qkv.weight', ...) → the GPT's name for it."""
    if key.startswith("tied_modules.embed."):
        return "embed." + key[len("tied_modules.embed."):]
    idx, _, rest = key.partition(".")
    prefix = gpt_prefix(int(idx), n_layer) if idx.isdigit() else None
    return prefix + rest if prefix else None


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
            TiedLayerSpec.__init__(self, "embed", PipeEmbedding, cfg, documents, forward_fn=forward_fn,
                                   tied_weight_attr="wte.weight")
            self.piece_index = index

    documents = StageDocuments()  # one per process: the layers this stage builds share it
    L = cfg.n_layer
    layers = [TiedSpec(0) if cfg.tie_embeddings else Spec(PipeEmbedding, 0, documents)]
    layers += [Spec(PipeBlock, 1 + i, documents) for i in range(L)]
    layers.append(Spec(PipeHead, L + 1))
    if cfg.tie_embeddings:
        layers.append(TiedSpec(0, forward_fn=_tied_logits))
    return PipelineModule(
        layers=layers,
        num_stages=num_stages,
        loss_fn=partial(lm_loss, z_loss=cfg.z_loss),
        partition_method="type:Block",
        activation_checkpoint_interval=activation_checkpoint_interval,
        # blocks only: DeepSpeed's (re-entrant) checkpoint of the embedding, whose input needs no
        # gradient, would cut the embedding off from its gradients
        checkpointable_layers=["PipeBlock"],
    )
