"""An encoder classifier's last layer computed at the first position only, the one its head reads.

Why: a BERT-like sequence classifier's head reads the last layer's output at the first token
([CLS] / <s>) and nothing else, yet the model computes that layer at every position. Rows are
independent in a layer everywhere but in attention's keys and values, so the last layer can take
its queries, residual and feed-forward at position 0 alone while its keys and values still come
from every position: the same first-position output, up to the sums' order (tested against the
whole layer for each family below). On DistilBERT-base (6 layers) that is ~12% of the linear work
of a batch; the deeper the model, the less it saves (1/L of the layers).

Only the families listed are changed, where the task reads the sequence classifier's output (text
classification, zero-shot by NLI): their heads read position 0 (checked in transformers' code for
each), their layers are separate modules (ALBERT's shared layer is not listed) and positions enter
at the embeddings, not in the layer (no rotary or relative positions). Under `dtype: int8`, the
last layer's dynamically quantised linears take their activation scale from the first positions
only (a narrower range: a finer grid), so int8 outputs change within int8's own error.

Recorded with the run (`last_layer`); the bench's float32 reference keeps the whole layer.
"""

from __future__ import annotations

from typing import Any

import torch

#: model_type: (the layer list under the base model, the last layer's self-attention module, its
#: query, key and value projections, and its output projection where that module applies it).
FAMILIES = {
    "distilbert": ("transformer.layer", "attention", ("q_lin", "k_lin", "v_lin"), "out_lin"),
    **{family: ("encoder.layer", "attention.self", ("query", "key", "value"), None)
       for family in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
}


class FirstQueryAttention(torch.nn.Module):
    """A self-attention module (`inner`) asked for its first position only: the query of that
    position against the keys and values of `every` position (set by FirstPositionLayer for the
    call). Attention is computed as torch's SDPA computes it, which is what transformers' sdpa
    implementation calls and, with an additive mask, what its eager one computes. The projections
    are looked up at each call: int8 quantisation may have replaced them."""

    def __init__(self, inner: torch.nn.Module, projections: tuple[str, str, str], output: str | None):
        super().__init__()
        self.inner, self.projections, self.output = inner, projections, output
        self.every: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        inner, every = self.inner, self.every
        if every is None:
            raise RuntimeError("FirstQueryAttention runs only inside its FirstPositionLayer")
        query, key, value = (getattr(inner, name) for name in self.projections)
        size = inner.attention_head_size

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(*x.shape[:2], -1, size).transpose(1, 2)

        if torch.is_tensor(attention_mask) and attention_mask.dim() == 4:
            attention_mask = attention_mask[..., :1, :]  # the first query's row, every key
        context = torch.nn.functional.scaled_dot_product_attention(
            heads(query(hidden_states)), heads(key(every)), heads(value(every)), attn_mask=attention_mask,
            scale=inner.scaling)
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:2], -1)
        if self.output is not None:
            context = getattr(inner, self.output)(context)
        return context, None


class FirstPositionLayer(torch.nn.Module):
    """Runs `layer` on the first position of its input; its self-attention (replaced by a
    FirstQueryAttention) still reads every position's keys and values."""

    def __init__(self, layer: torch.nn.Module, attention: FirstQueryAttention):
        super().__init__()
        self.layer, self.attention = layer, [attention]  # a list: the module is the layer's child already

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        attention = self.attention[0]
        attention.every = hidden_states
        try:
            return self.layer(hidden_states[:, :1], *args, **kwargs)
        finally:
            attention.every = None


def keep_first_position(model: Any) -> str:
    """Make a sequence classifier of a listed family compute its last layer at position 0 only;
    what was done (or why not), for the run's record. Idempotent."""
    family = getattr(model.config, "model_type", None)
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return f"every position ({type(model).__name__} is not a sequence classifier)"
    if family not in FAMILIES:
        return f"every position (model type {family!r} is not one whose head is known to read position 0 alone)"
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return f"every position (attention implementation {implementation!r})"
    where, path, projections, output = FAMILIES[family]
    try:
        layers = _layers(model)
        last = layers[-1]
        if not isinstance(last, FirstPositionLayer):
            inner = last.get_submodule(path)
            for name in (*projections, *([output] if output else []), "attention_head_size", "scaling"):
                getattr(inner, name)
            attention = FirstQueryAttention(inner, projections, output)
            parent, _, child = path.rpartition(".")
            setattr(last.get_submodule(parent) if parent else last, child, attention)
            layers[-1] = FirstPositionLayer(last, attention)
    except (AttributeError, IndexError, TypeError):
        return f"every position ({family} model without the expected {where}[-1].{path})"
    return "first position only: the classifier's head reads position 0 alone"


def last_layer(model: Any) -> str:
    """What the run's record says of the model's last layer."""
    try:
        layers = _layers(model)
    except (AttributeError, KeyError):
        layers = ()
    return "first position only" if layers and isinstance(layers[-1], FirstPositionLayer) else "every position"


def _layers(model: Any) -> Any:
    """The layer list of a model of a listed family (KeyError: not listed)."""
    return model.base_model.get_submodule(FAMILIES[getattr(model.config, "model_type", None)][0])
