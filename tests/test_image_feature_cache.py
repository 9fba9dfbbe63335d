"""A locked image tower's cached features stand in exactly for running the tower."""

import io

import PIL.Image
import pytest
import torch

from make_hf import MakeModel, train_tokenizer
from make_hf.data import MakeCollator
from make_hf.image_feature_cache import ImageFeatureCache, image_content_key
from make_hf.processing_make import MakeProcessor
from model_inputs import single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

QUERIES = ["red mug", "blue vase", "usb cable", "green dress"]
TITLES = ["ceramic coffee mug red 350ml", "glass flower vase blue", "braided usb c cable 2m", "summer dress green"]


def png(colour, size=40):
    buffer = io.BytesIO()
    image = PIL.Image.new("RGB", (size, size), colour)
    image.putpixel((3, 5), (0, 0, 0))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [png((200, 30, 30)), png((30, 30, 200)), png((90, 90, 90)), png((30, 160, 30))]


@pytest.fixture()
def model_and_processor():
    torch.manual_seed(0)
    config = tiny_config("make-tiny", vocab_size=120)
    processor = MakeProcessor.from_config(config, train_tokenizer(QUERIES + TITLES, vocab_size=120))
    processor.fit_keywords(TITLES, QUERIES)
    model = MakeModel(config).lock_image_tower()
    return model, processor


def rows(images=IMAGES):
    return [{"query": q, "title": t, "image": {"bytes": i, "path": None}, "product_id": str(n)}
            for n, (q, t, i) in enumerate(zip(QUERIES, TITLES, images))]


def loss_and_gradients(model, batch):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout in the text towers for both batches
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_features_give_the_loss_and_gradients_of_the_locked_tower(model_and_processor, tmp_path):
    model, processor = model_and_processor
    model.train()
    assert not model.vision_model.training  # locked: batch norm / dropout of the tower stay in eval mode
    cache = ImageFeatureCache(tmp_path, model, processor)
    assert cache.fill([row["image"] for row in rows()]) == 4

    uncached = MakeCollator(processor)(rows())
    cached = MakeCollator(processor, image_features=cache)(rows())
    assert "pixel_values" not in cached
    assert cached["image_features"].shape == (4, model.config.vision_config.hidden_size)

    loss, gradients = loss_and_gradients(model, uncached)
    cached_loss, cached_gradients = loss_and_gradients(model, cached)
    torch.testing.assert_close(cached_loss, loss, rtol=0, atol=1e-6)
    assert gradients.keys() == cached_gradients.keys()
    assert not any(name.startswith("vision_model.") for name in gradients)  # the tower is frozen
    assert "image_projection.weight" in gradients
    for name, gradient in gradients.items():
        torch.testing.assert_close(cached_gradients[name], gradient, rtol=0, atol=1e-6, msg=name)


def test_cache_is_reused_across_instances_and_keyed_by_content_and_tower(model_and_processor, tmp_path):
    model, processor = model_and_processor
    first = ImageFeatureCache(tmp_path, model, processor)
    first.fill(IMAGES[:2])
    again = ImageFeatureCache(tmp_path, model, processor)
    assert len(again) == 2
    assert again.fill(IMAGES) == 2  # only the two it lacks
    # The same content as a file path gets the same entry.
    path = tmp_path / "mug.png"
    path.write_bytes(IMAGES[0])
    assert image_content_key(str(path)) == image_content_key(IMAGES[0])
    torch.testing.assert_close(again.lookup([str(path)])[0], again.lookup([IMAGES[0]])[0])

    torch.manual_seed(5)
    other_tower = MakeModel(model.config).lock_image_tower()
    assert len(ImageFeatureCache(tmp_path, other_tower, processor)) == 0


def test_unreadable_image_is_skipped_and_counted(model_and_processor, tmp_path):
    model, processor = model_and_processor
    broken = IMAGES[:3] + [b"not an image at all"]
    cache = ImageFeatureCache(tmp_path, model, processor)
    cache.fill(broken)
    collator = MakeCollator(processor, image_features=cache)
    batch = collator(rows(broken))
    assert batch["image_features"].shape[0] == 3
    assert collator.skipped_rows.summary()["by_reason"] == {"corrupt_image": 1}
