"""GradCache: the contrastive loss of a batch larger than what its encoder graphs fit in memory.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (RepL4NLP 2021), the method
behind sentence-transformers' `CachedMultipleNegativesRankingLoss`. A contrastive loss couples every row of the batch
to every other, but the encoders treat rows independently. So a step:

1. encodes the batch in chunks of `chunk_size` rows without a graph, saving the random state before each chunk;
2. computes the full-batch loss on those embeddings (gathered from every process, as without GradCache) and its
   gradient with respect to each embedding and to the temperature;
3. re-encodes each chunk with its graph, its random state restored so that dropout draws the same masks, and
   backpropagates the cached embedding gradients through it.

The parameter gradients are those of the full-batch loss on the chunk-wise encoded batch; peak memory is that of one
chunk's graph plus the embeddings. The price is a second forward pass of the encoders.

Used by `make_hf.training.trainer` for `--gradcache_chunk_size`:

```python
grad_cache = GradCache.for_accelerator(accelerator, model, chunk_size=32)
with accelerator.accumulate(model):
    outputs = grad_cache.forward(batch)  # the loss terms, no weight gradient yet
    grad_cache.backward()  # accumulates the weight gradients, as `accelerator.backward(outputs.loss)` would
```
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from ..modeling_make import MakeModel, MakeOutput

EMBEDDING_FIELDS = ("query_embeds", "title_embeds", "image_embeds", "product_embeds", "keyword_embeds")
"""The `MakeOutput` fields the loss reads: what GradCache caches, with their gradients."""


class _RandomState:
    """The CPU and accelerator random states at one moment, to replay a chunk's dropout in its second pass."""

    def __init__(self, tensors):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block from the saved state; the random state after it is what it was before it."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


class GradCache:
    """
    One training step's forward and backward of a MAKE model in chunks of rows (see the module docstring).

    Args:
        model: the model as the training loop calls it: a `MakeModel`, or a wrapper of it with a `module` attribute
            (`DistributedDataParallel` after `accelerator.prepare`). The second pass of each chunk goes through it, so
            that DDP reduces the gradients.
        chunk_size (`int`): rows encoded at once; the batch's last chunk may be smaller.
        backward (*optional*): called with the surrogate loss of each chunk (default `tensor.backward()`; the trainer
            passes `accelerator.backward`, which divides by the accumulation steps and scales for fp16).
        no_sync (*optional*): a context manager factory under which a backward pass leaves the gradients unreduced
            (default: the model's `no_sync`, if it has one). Every chunk but the last runs under it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        chunk_size: int,
        backward: Callable[[torch.Tensor], None] | None = None,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` (--gradcache_chunk_size) must be a positive integer, got {chunk_size!r}.")
        self.model = model
        self.inner = model
        while not isinstance(self.inner, MakeModel) and hasattr(self.inner, "module"):
            self.inner = self.inner.module
        if not isinstance(self.inner, MakeModel):
            raise TypeError(f"GradCache trains a MakeModel (or a wrapper of one), got {type(model).__name__}.")
        self.chunk_size = chunk_size
        self._backward = backward or (lambda loss: loss.backward())
        self._no_sync = no_sync or getattr(model, "no_sync", contextlib.nullcontext)
        self._pending = None

    @classmethod
    def for_accelerator(cls, accelerator, model: torch.nn.Module, chunk_size: int) -> "GradCache":
        """A GradCache for a model prepared by `accelerator`, using its backward and no_sync."""
        return cls(model, chunk_size, backward=accelerator.backward, no_sync=lambda: accelerator.no_sync(model))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> MakeOutput:
        """
        Encode `batch` (the inputs of `MakeModel.forward`) chunk by chunk without a graph, compute its loss and cache
        the loss's gradients with respect to the embeddings. No parameter gradient changes yet: the caller can check
        the loss (non-finite values) before calling [`~GradCache.backward`].

        Returns:
            [`MakeOutput`] with the loss and every loss term (detached), the embeddings and the logits.
        """
        if self._pending is not None:
            raise RuntimeError("GradCache.forward was called twice without GradCache.backward in between.")
        size = _batch_size(batch)
        chunks = [slice(start, min(start + self.chunk_size, size)) for start in range(0, size, self.chunk_size)]
        random_states, pieces, modal_weights = [], [], []
        with torch.no_grad():
            for rows in chunks:
                inputs = _rows(batch, rows)
                random_states.append(_RandomState([v for v in inputs.values() if isinstance(v, torch.Tensor)]))
                output = self.inner(**inputs, return_loss=False)
                pieces.append([getattr(output, name) for name in EMBEDDING_FIELDS])
                modal_weights.append(output.modal_weights)
        # In fp32 whatever the encoders ran in: under fp16 there is no loss scale yet to keep these gradients from
        # underflowing, and the loss costs little next to the encoders.
        embeds = {
            name: None if column[0] is None else torch.cat(column).float().requires_grad_()
            for name, column in zip(EMBEDDING_FIELDS, zip(*pieces))
        }
        masks = self.inner.modality_masks(**batch)
        with torch.autocast(device_type=self.inner.logit_scale.device.type, enabled=False):
            losses = self.inner.loss_from_embeddings(
                embeds, masks, batch.get("query_term_ids"), batch.get("keyword_term_ids"), batch.get("product_ids")
            )
        if losses.loss is None:
            raise ValueError(
                "GradCache: no loss term can be computed from the batch: give `query_input_ids` with "
                "`title_input_ids` and/or `pixel_values` (or other pairs with a positive loss weight)."
            )
        present = [name for name in EMBEDDING_FIELDS if embeds[name] is not None]
        logit_scale = self.inner.logit_scale
        wrt = [embeds[name] for name in present] + ([logit_scale] if logit_scale.requires_grad else [])
        gradients = torch.autograd.grad(losses.loss, wrt, allow_unused=True)
        embedding_gradients = {
            name: torch.zeros_like(embeds[name]) if gradient is None else gradient
            for name, gradient in zip(present, gradients)
        }
        logit_scale_gradient = gradients[len(present)] if logit_scale.requires_grad else None
        self._pending = (batch, chunks, random_states, embedding_gradients, logit_scale_gradient)

        losses.loss = losses.loss.detach()
        losses.terms = {name: value.detach() for name, value in losses.terms.items()}
        for field in ("logits_per_query", "logits_per_product", "masked_negatives"):
            value = getattr(losses, field)
            setattr(losses, field, None if value is None else value.detach())
        detached = {name: None if value is None else value.detach() for name, value in embeds.items()}
        weights = None if modal_weights[0] is None else torch.cat(modal_weights)
        return self.inner.output_from_loss(detached, losses, weights)

    def backward(self) -> None:
        """Re-encode each chunk of the last `forward`'s batch with its graph and the same dropout, and backpropagate
        the cached embedding gradients (and the temperature's) into the parameters."""
        if self._pending is None:
            raise RuntimeError("GradCache.backward needs a GradCache.forward first.")
        batch, chunks, random_states, embedding_gradients, logit_scale_gradient = self._pending
        self._pending = None
        for index, (rows, random_state) in enumerate(zip(chunks, random_states)):
            last = index == len(chunks) - 1
            # Gradients are reduced across processes once, in the last chunk's backward, over their accumulated sum.
            with contextlib.nullcontext() if last else self._no_sync(), random_state.restored():
                output = self.model(**_rows(batch, rows), return_loss=False)
                surrogate = sum(
                    (getattr(output, name).float() * gradient[rows]).sum()
                    for name, gradient in embedding_gradients.items()
                )
                if last and logit_scale_gradient is not None:
                    # In the synchronised pass, so that DDP reduces the temperature's gradient with the others.
                    surrogate = surrogate + (self.inner.logit_scale * logit_scale_gradient).sum()
                self._backward(surrogate)


def _batch_size(batch: Mapping) -> int:
    sizes = {value.shape[0] for value in batch.values() if isinstance(value, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"GradCache needs a batch whose tensors share one first dimension; got sizes {sorted(sizes)}.")
    return sizes.pop()


def _rows(batch: Mapping, rows: slice) -> dict:
    return {key: value[rows] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


__all__ = ["EMBEDDING_FIELDS", "GradCache"]
