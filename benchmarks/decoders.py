"""Our decoding (PIL, no EXIF transpose; masks JPEG -> RGB -> L) against the original's (cv2.imread:
IMREAD_COLOR for images, IMREAD_GRAYSCALE for masks) on a medical-layout dataset, and on a JPEG written with
an EXIF orientation tag. Pixel counts only (docs/data.md, "Differences from the original implementation").

    python benchmarks/decoders.py [--root ../shared/data/kvasir_seg_mini]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data.readers import decode_image, decode_mask  # noqa: E402

ORIENTATION = 0x0112  # the EXIF tag


def compare(root: Path) -> None:
    images, masks = sorted((root / "images").iterdir()), sorted((root / "masks").iterdir())
    tagged = sum(Image.open(p).getexif().get(ORIENTATION, 1) != 1 for p in images + masks)
    print(f"{len(images)} images, {len(masks)} masks; files with an EXIF orientation other than 1: {tagged}")
    differing = 0
    for p in images:
        ours, theirs = decode_image(p), cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        differing += int((ours != theirs).sum()) if ours.shape == theirs.shape else ours.size
    print(f"images: {differing} channel values differ")
    n = dict(pixels=0, grey_differs=0, fg255_ours=0, fg255_cv2=0, fg255_differs=0, fg127_ours=0, fg127_differs=0,
             between_0_and_255=0)
    for p in masks:
        ours, theirs = decode_mask(p, None, 1.0), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        n["pixels"] += ours.size
        n["grey_differs"] += int((ours != theirs).sum())
        n["fg255_ours"] += int((ours == 255).sum())
        n["fg255_cv2"] += int((theirs == 255).sum())
        n["fg255_differs"] += int(((ours == 255) != (theirs == 255)).sum())
        n["fg127_ours"] += int((ours > 127).sum())
        n["fg127_differs"] += int(((ours > 127) != (theirs > 127)).sum())
        n["between_0_and_255"] += int(((ours > 0) & (ours < 255)).sum())
    print("masks:", n)
    print(f"share of the > 127 foreground that is exactly 255: {n['fg255_ours'] / max(n['fg127_ours'], 1):.4f}")


def exif_case() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "orientation6.jpg"
        image = Image.fromarray(np.zeros((40, 60, 3), np.uint8))  # stored 60 x 40 (W x H)
        exif = image.getexif()
        exif[ORIENTATION] = 6  # displayed rotated by 90 degrees
        image.save(path, exif=exif)
        print(f"EXIF orientation 6, stored 60x40 (WxH): ours {decode_image(path).shape[:2]}, "
              f"cv2 IMREAD_COLOR {cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2]}, "
              f"cv2 IMREAD_GRAYSCALE {cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape[:2]} (H, W)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kvasir_seg_mini")
    args = ap.parse_args()
    compare(args.root)
    exif_case()
