"""Torch datasets over the preprocessing cache, the seeded dev hold-out, and the DataLoader factory."""
from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from skinseg.config import Config
from skinseg.data.augment import eval_transform, train_transform
from skinseg.data.cache import SplitCache, build_cache
from skinseg.data.isic import get_split
from skinseg.errors import ConfigError, DataError
from skinseg.paths import resolve


class ISICDataset(Dataset):
    """Samples of one cached split: ``{"image": 3xSxS float, "mask": 5xSxS float, "id": str, "index": int}``.

    Splits without ground truth yield no ``"mask"``. ``indices`` restricts the dataset to a subset (the dev
    hold-out); ``index`` is always the position in the full cache, so original sizes can be looked up.
    With ``seed`` set, the augmentation of every sample is seeded from (seed, epoch, position): the
    :class:`EpochSampler` encodes the epoch into the index, so results do not depend on worker count or on
    where a resumed run restarted.
    """

    def __init__(self, cache: SplitCache, transform, indices: np.ndarray | None = None, seed: int | None = None):
        self.cache = cache
        self.transform = transform
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices)
        self.seed = seed
        self._images = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        epoch, k = divmod(int(k), len(self.indices))
        i = int(self.indices[k])
        if self._images is None:  # opened lazily so that each DataLoader worker maps its own view
            self._images = self.cache.images
        if self.seed is not None:
            self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, k]).generate_state(1)[0]))
        image = np.asarray(self._images[i])
        sample = {"id": self.cache.ids[i], "index": i}
        if self.cache.has_masks:
            mask = self.cache.mask(i).transpose(1, 2, 0)  # HxWx5 for albumentations
            out = self.transform(image=image, mask=mask)
            sample["image"] = out["image"]
            sample["mask"] = out["mask"].float()
        else:
            sample["image"] = self.transform(image=image)["image"]
        return sample


class EpochSampler(Sampler):
    """A DistributedSampler (shuffled by seed + epoch, sharded by rank) whose indices carry the epoch.

    Index ``epoch * len(dataset) + k`` tells :class:`ISICDataset` both the sample and the epoch, so the
    augmentation seed is known inside DataLoader workers without shared state. With ``weights`` (one per
    sample, see :func:`rare_weights`) an epoch is as many draws with replacement, seeded by seed + epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world: int = 1, weights=None):
        self.n = len(dataset)
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self):
        if self.weights is None:
            order = iter(self.inner)
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            drawn = torch.multinomial(self.weights, len(self.inner) * self.world, replacement=True,
                                      generator=generator)
            order = drawn[self.rank::self.world].tolist()
        return (self.epoch * self.n + i for i in order)

    def __len__(self) -> int:
        return len(self.inner)


def rare_weights(present: np.ndarray) -> np.ndarray:
    """Sampling weight per image for ``sampler: rare``: sqrt(count of the most frequent attribute / count of
    the image's rarest present attribute), 1 for images with none. On ISIC 2018 train that draws an image with
    streaks (100 images) 3.9x, negative network (190) 2.8x and milia-like cysts (682) 1.5x as often as one with
    pigment network (1523) alone."""
    counts = np.maximum(present.sum(0), 1)
    boost = np.sqrt(counts.max() / counts)
    return np.where(present, boost[None], 1.0).max(1, initial=1.0)


def dev_holdout(present: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a fixed, seeded, attribute-stratified hold-out of ``fraction`` of the images.

    Images are grouped by their rarest present attribute (or "none"), so that rare attributes such as
    streaks get their share of the hold-out.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    counts = present.sum(0)
    order = np.argsort(counts)  # rarest attribute first
    group = np.full(len(present), -1)
    for a in order[::-1]:  # rarest written last, so it wins
        group[present[:, a]] = a
    groups = [np.flatnonzero(group == g) for g in np.unique(group)]
    # largest-remainder quotas: proportional per group, summing to round(N * fraction)
    exact = np.array([len(m) * fraction for m in groups])
    quota = np.floor(exact).astype(int)
    extra = int(round(len(present) * fraction)) - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:extra]] += 1
    chosen = []
    for members, q in zip(groups, quota):
        chosen.extend(rng.permutation(members)[:q])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def split_cache(cfg: Config, split: str) -> tuple[SplitCache, np.ndarray | None]:
    """The cache and subset indices for a config split name (train, val, test, or the dev hold-out of train)."""
    root = resolve(cfg.data_root)
    if root is None:
        raise DataError("data_root is not set: point it at the ISIC data, or run `skinseg synth DIR` first")
    if split == "dev" and cfg.dev_fraction <= 0:  # "dev" would otherwise be the whole training split
        raise ConfigError("split 'dev': this config (or checkpoint) has no dev hold-out (dev_fraction: 0), so every "
                          "training image was trained on; evaluate on val or test, or train with dev_fraction > 0")
    source = "train" if split == "dev" else split
    cache = build_cache(get_split(root, source), size=cfg.image_size, mode=cfg.resize_mode,
                        workers=cfg.num_workers or None)
    if cfg.dev_fraction <= 0 or source != "train":
        return cache, None
    if cache.present is None:
        raise DataError("the dev hold-out needs the training split's ground truth")
    dev = dev_holdout(cache.present, cfg.dev_fraction, cfg.holdout_seed)
    if split == "dev":
        return cache, dev
    return cache, np.setdiff1d(np.arange(len(cache)), dev)


def make_dataset(cfg: Config, split: str, train: bool) -> ISICDataset:
    cache, indices = split_cache(cfg, split)
    return ISICDataset(cache, train_transform(cfg) if train else eval_transform(cfg), indices)


def make_loader(cfg: Config, split: str, train: bool, rank: int = 0, world: int = 1,
                dataset: ISICDataset | None = None) -> DataLoader:
    """DataLoader for a split: shuffled + augmented (:class:`EpochSampler`) for training, ordered for evaluation.

    Evaluation shards by rank without padding (``indices[rank::world]``), so no image is counted twice when
    scores are summed across ranks.
    """
    if dataset is None:
        dataset = make_dataset(cfg, split, train)
    if train:
        dataset.seed = cfg.seed
        weights = None
        if cfg.sampler == "rare":
            if dataset.cache.present is None:
                raise DataError("sampler: rare needs the training split's ground truth")
            weights = rare_weights(dataset.cache.present[dataset.indices])
        sampler = EpochSampler(dataset, cfg.seed, rank, world, weights)
    else:
        sampler = list(range(rank, len(dataset), world))
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=train and len(sampler) > cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
