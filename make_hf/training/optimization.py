"""Optimiser construction for MAKE pre-training."""

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a weight-decay group and a no-decay group.

    Matrices (linear and attention weights, projections) are decayed; biases, LayerNorm weights, embeddings' norms
    and the learnable temperature (`logit_scale`) are not: decaying the temperature would pull it towards 1 and
    flatten the contrastive softmax. Parameters are deduplicated by identity so that a module reached through two
    paths (a shared text encoder) is optimised once.
    """
    seen: set[int] = set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if parameter.ndim < 2 or "logit_scale" in name or "norm" in name.lower():
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def create_optimizer(model: nn.Module, learning_rate: float, weight_decay: float, betas=(0.9, 0.98), eps=1e-6):
    """AdamW over `parameter_groups`; betas and eps follow CLIP-style contrastive pre-training."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps)


__all__ = ["parameter_groups", "create_optimizer"]
