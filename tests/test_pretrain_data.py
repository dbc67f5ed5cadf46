"""Resumable batch order, per-sample seeded augmentations, dataset errors."""
import pytest
import torch
from PIL import Image

from us3l.data import ResumableBatchSampler, TwoViewDataset, build_dataset, eval_transform, ssl_transform


def test_batch_order_resumes_and_shards():
    full = list(ResumableBatchSampler(50, 8, seed=3, num_iterations=20))
    assert len(full) == 20 and all(len(b) == 8 for b in full)  # 6 iterations/epoch, epochs roll over
    assert full[6][0][0] == 1 and sorted(i for b in full[:6] for _, i in b) != list(range(48))  # shuffled
    tail = list(ResumableBatchSampler(50, 8, seed=3, start_iteration=9, num_iterations=20))
    assert tail == full[9:]
    r0 = ResumableBatchSampler(50, 4, seed=3, rank=0, world_size=2).epoch_indices(0)
    r1 = ResumableBatchSampler(50, 4, seed=3, rank=1, world_size=2).epoch_indices(0)
    assert len(r0) == len(r1) == 25 and set(r0) | set(r1) == set(range(50))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        ResumableBatchSampler(6, 8)


def test_views_are_a_function_of_seed_epoch_index():
    img = Image.new("RGB", (40, 40))
    img.putdata([((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(40) for x in range(40)])

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return img, 0

    ds = TwoViewDataset(One(), ssl_transform("cifar", 16), seed=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    (a1, a2), _ = ds[(0, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    (b1, b2), _ = ds[(0, 1)]
    (c1, _), _ = ds[(1, 1)]
    assert a1.shape == (3, 16, 16) and torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    assert ssl_transform("imagenet", 24)(img).shape == (3, 24, 24)
    assert eval_transform("imagenet", 24)(img).shape == (3, 24, 24)


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet1k", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("imagefolder", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is empty"):
        build_dataset("cifar100", str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        build_dataset("imagefolder", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no images"):
        build_dataset("images", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar100 not found"):
        build_dataset("cifar100", str(tmp_path))


def test_coco_style_flat_images(tiny_coco):
    ds = build_dataset("images", tiny_coco["root"], "train", eval_transform("cifar", 16))
    x, y = ds[0]
    assert len(ds) == tiny_coco["num_train"] and x.shape == (3, 16, 16) and y == -1
