"""Data layer: the official ISIC 2018 Task 2 layout, the preprocessing cache, datasets and the synthetic set."""
