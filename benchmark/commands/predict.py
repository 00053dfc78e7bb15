"""`tunevlseg predict`: segment new images with a tuned prompt (an artifact written by a trial)."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "segment new images with a tuned-prompt artifact; writes PNG masks (and overlays)"
DESCRIPTION = (
    "Load a tuned-prompt artifact (the trainable tensors + config a trial saved; the frozen VLSM is loaded "
    "from its original weights) and write one 0/255 PNG mask per image at the image's own resolution."
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifact", required=True,
                   help="a run directory with --cell (that cell's selected trial), a trial directory of a run "
                        "(<run>/tune/<cell>_<index>_<id>), one of its checkpoints, or an artifact directory")
    p.add_argument("--cell", default=None,
                   help="with a run directory as --artifact: use the trial the run selected for this cell, "
                        "e.g. clipseg_maple_kvasir")
    p.add_argument("--images", required=True, help="a directory of images or a single image file")
    p.add_argument("--out", required=True, help="output directory for <stem>.png masks (<stem>_<suffix>.png where "
                                                "two inputs share a stem)")
    p.add_argument("--prompt", default=None,
                   help="text prompt (default: the dataset prompt recorded in the artifact, else required)")
    p.add_argument("--weights", default=None, help="override where the frozen VLSM weights are loaded from")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")


def mask_names(files) -> dict:
    """{input file: mask file name}: `<stem>.png`, or `<stem>_<suffix>.png` for inputs that share a stem
    (a.png and a.jpg), so that no mask replaces another (made unique with a counter if need be)."""
    from collections import Counter

    stems = Counter(f.stem for f in files)
    names, taken = {}, set()
    for f in files:
        base = f.stem if stems[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[f] = name
    return names


def check_output(src, files, out, overlay: bool) -> None:
    """Masks never overwrite what they were predicted from: refuse an --out that is the input folder, or
    any output file that is an input file (masks are named <stem>.png, so a PNG input would be replaced)."""
    from pathlib import Path

    from trainables.config import ConfigError

    folder = (src if src.is_dir() else src.parent).resolve()
    if out.resolve() == folder:
        raise ConfigError(f"--out {out} is the input folder of --images; masks would replace the images "
                          "(<stem>.png); pass another --out directory")
    inputs = {Path(f).resolve() for f in files}
    for f, stem in mask_names(files).items():
        names = [f"{stem}.png"] + ([f"{stem}_overlay.png"] if overlay else [])
        for name in names:
            if (out / name).resolve() in inputs:
                raise ConfigError(f"--out {out}: writing {name} would overwrite the input image {out / name}; "
                                  "pass another --out directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image, UnidentifiedImageError

    from trainables.batches import device_images, device_tokens
    from trainables.config import ConfigError
    from trainables.data.transforms import resize_image
    from trainables.model import build_from_artifact

    src = Path(args.images)
    if not src.exists():
        raise FileNotFoundError(f"--images {src} does not exist")
    files = [src] if src.is_file() else sorted(f for f in src.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}")
    if not 0 < args.threshold < 1:
        raise ConfigError(f"--threshold must be in (0, 1), got {args.threshold}")
    out = Path(args.out)
    check_output(src, files, out, args.overlay)
    names = mask_names(files)

    artifact = args.artifact
    if args.cell:
        from benchmark.results.run_dir import RunDir

        artifact = RunDir(args.artifact).selected_trial_dir(args.cell)
    model = build_from_artifact(artifact, **({'weights': args.weights} if args.weights else {}))
    prompt = args.prompt or getattr(model, "default_prompt", None)
    if not prompt:
        raise ConfigError("--prompt is required: this artifact records no default prompt")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model.to(device).eval()
    spec = model.spec
    out.mkdir(parents=True, exist_ok=True)

    def load(path: Path):
        try:
            img = Image.open(path)
            img.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"cannot read image {path}: {e}; is it a complete image file?") from None
        rgb = np.ascontiguousarray(img.convert("RGB"))  # greyscale, RGBA and palette images become RGB
        # The training pipeline's own resize (the trial's data.resize, recorded in the artifact), so a tuned
        # prompt sees the pixels it was tuned on; normalisation happens on the device, as in training.
        small = resize_image(rgb, spec.image_size, model.input_resize)
        return rgb, torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))

    written = 0
    for i in range(0, len(files), args.batch_size):
        chunk = files[i : i + args.batch_size]
        loaded = [load(f) for f in chunk]
        x = device_images(torch.stack([t for _, t in loaded]), device, spec.mean, spec.std)
        tokens = device_tokens(model, [prompt] * len(chunk), device)
        with torch.no_grad():
            probs = torch.sigmoid(model(x, **tokens).float())
        for f, (rgb, _), p in zip(chunk, loaded, probs):
            h, w = rgb.shape[:2]
            p = F.interpolate(p[None], size=(h, w), mode="bicubic", align_corners=False)[0, 0].cpu()
            mask = (p >= args.threshold).numpy().astype(np.uint8) * 255
            Image.fromarray(mask).save(out / f"{names[f]}.png")
            if args.overlay:
                over = rgb.astype(np.float32).copy()
                over[mask > 0] = 0.5 * over[mask > 0] + 0.5 * np.array([255, 0, 0])
                Image.fromarray(over.astype(np.uint8)).save(out / f"{names[f]}_overlay.png")
            written += 1
    renamed = sum(name != f.stem for f, name in names.items())
    print(f"wrote {written} mask(s) to {out} (prompt: {prompt!r})"
          + (f"; {renamed} input(s) share a stem with another, named <stem>_<suffix>.png" if renamed else ""))
    return 0
