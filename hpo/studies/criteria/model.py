"""The ``criteria`` classifier: a transformer encoder over token ids, mean-pooled, linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpo.studies.criteria.data import PAD_ID


@dataclass(frozen=True)
class ModelPreset:
    """Size of a transformer encoder."""

    d_model: int  # width of the token representations
    n_layers: int  # encoder layers
    n_heads: int  # attention heads per layer (must divide d_model)
    d_ff: int  # hidden width of the feed-forward blocks


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(d_model=64, n_layers=2, n_heads=2, d_ff=128),
    "small": ModelPreset(d_model=128, n_layers=2, n_heads=4, d_ff=256),
    "base": ModelPreset(d_model=256, n_layers=4, n_heads=4, d_ff=512),
    # Close to roberta-base's encoder (about 85M parameters without the embeddings): GPU only.
    "large": ModelPreset(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
}


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, a pre-norm encoder, masked mean pooling, a head."""

    def __init__(
        self, preset: ModelPreset, vocab_size: int, seq_len: int, n_classes: int, dropout: float
    ) -> None:
        super().__init__()
        d = preset.d_model
        self.tokens = nn.Embedding(vocab_size, d, padding_idx=PAD_ID)
        self.positions = nn.Embedding(seq_len, d)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            preset.n_heads,
            preset.d_ff,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, preset.n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.head = nn.Linear(d, n_classes)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[PAD_ID].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_classes] for token ids [batch, seq_len] (PAD_ID = padding)."""
        pad = tokens == PAD_ID
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.tokens(tokens) + self.positions(pos)[None])
        x = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"model preset {name!r} is unknown; valid presets: {', '.join(PRESETS)}"
        ) from None


def build_model(
    preset: str, vocab_size: int, seq_len: int, n_classes: int, dropout: float
) -> TransformerClassifier:
    """A fresh classifier of the named preset size."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return TransformerClassifier(get_preset(preset), vocab_size, seq_len, n_classes, dropout)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
