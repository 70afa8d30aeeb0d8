"""A tiny generated detection dataset and the embedded demo job.

Used by the README's demo, the tests and the benchmarks: nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(230, 40, 40), (40, 200, 60), (40, 80, 230)]


def make_dataset(root: Path, images: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Write ``images`` train and val images with coloured boxes; return the data yaml path.

    Each image holds one to three filled rectangles; the class is the colour.
    """
    rng = random.Random(seed)
    root = Path(root)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        count = images if split == "train" else max(4, images // 4)
        for i in range(count):
            _write_sample(root, split, i, size, rng)
    data = root / "data.yaml"
    data.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
        "names:\n  0: red\n  1: green\n  2: blue\n"
    )
    return data


def _write_sample(root: Path, split: str, i: int, size: int, rng: random.Random) -> None:
    img = Image.new("RGB", (size, size), (rng.randint(0, 60),) * 3)
    draw = ImageDraw.Draw(img)
    lines = []
    for _ in range(rng.randint(1, 3)):
        w, h = rng.randint(size // 6, size // 2), rng.randint(size // 6, size // 2)
        x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
        cls = rng.randrange(len(COLOURS))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=COLOURS[cls])
        cx, cy = (x0 + w / 2) / size, (y0 + h / 2) / size
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
    img.save(root / "images" / split / f"{i:04d}.jpg")
    (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")


def demo_job(data_yaml: Path, name: str = "demo", epochs: int = 6) -> dict:
    """The embedded default job: yolov8n from its yaml, on CPU, tiny images."""
    return {
        "name": name,
        "train": {
            "model": "yolov8n.yaml",
            "data": str(data_yaml),
            "epochs": epochs,
            "imgsz": 64,
            "batch": 8,
            "workers": 0,
            "device": "cpu",
            "plots": False,
            "amp": False,
        },
        "restart": {"backoff": {"initial": 1.0, "max": 10.0, "factor": 2.0}},
    }
