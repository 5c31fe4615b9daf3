"""Draw real faces beside their self-blend masks and self-blends, to look at.

Rows: the real face (its five landmarks marked), the mask (white = all source), the
self-blend, and the difference |blend - real| amplified to full brightness per face.

Run from the repository root:

    python -m scripts.selfblend_grid --data-dir data/lfw-faceswap \\
        --output models/selfblend_grid.png --count 8 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROW_NAMES = ("real", "mask", "self-blend", "|difference|")
LABEL_WIDTH = 96  # pixels of the left strip that names the rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with Train/Real/*.jpg (lfw-faceswap)")
    parser.add_argument("--split", default="Train", help="which split's Real faces to draw (default: Train)")
    parser.add_argument("--output", type=Path, default=Path("models/selfblend_grid.png"), help="PNG to write")
    parser.add_argument("--count", type=int, default=8, help="faces, one per column (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="picks the faces and draws the blends (default: 0)")
    return parser


def marked(face: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The face with its landmarks as small red dots."""
    image = Image.fromarray(face)
    draw = ImageDraw.Draw(image)
    for x, y in landmarks:
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 40, 40))
    return np.asarray(image)


def amplified(difference: np.ndarray) -> np.ndarray:
    """|difference| scaled so its largest value is white (black stays black)."""
    peak = difference.max()
    return (difference * (255.0 / peak)).astype(np.uint8) if peak > 0 else difference.astype(np.uint8)


def main(args: argparse.Namespace) -> Path:
    from deepfake_detector.faces import default_finder
    from deepfake_detector.selfblend import face_landmarks, seam_width, self_blend

    folder = args.data_dir / args.split / "Real"
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) < args.count:
        raise SystemExit(f"need {args.count} faces in {folder}, found {len(paths)}")
    rng = np.random.default_rng(args.seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), args.count, replace=False))]

    finder = default_finder("retinaface")
    columns, seams = [], []
    for path in chosen:
        face = np.asarray(Image.open(path).convert("RGB"))
        landmarks = face_landmarks(face, finder)
        blended, mask = self_blend(face, landmarks, rng)
        difference = np.abs(blended.astype(np.int16) - face.astype(np.int16)).max(axis=2)
        rows = [marked(face, landmarks), np.uint8(np.rint(mask * 255)), blended, amplified(difference)]
        rows = [row if row.ndim == 3 else np.repeat(row[..., None], 3, axis=2) for row in rows]
        columns.append(np.concatenate(rows, axis=0))
        seams.append(seam_width(mask, landmarks))
        logging.info(
            "%s: mask peak %.2f, covers %.0f%%, seam %.2f eye distances wide",
            path.name,
            mask.max(),
            100 * (mask > 0).mean(),
            seams[-1],
        )
    logging.info("seam width: median %.2f, range %.2f-%.2f eye distances", np.median(seams), min(seams), max(seams))

    grid = np.concatenate(columns, axis=1)
    labels = Image.new("RGB", (LABEL_WIDTH, grid.shape[0]), "white")
    draw = ImageDraw.Draw(labels)
    tile = grid.shape[0] // len(ROW_NAMES)
    for index, name in enumerate(ROW_NAMES):
        draw.text((6, index * tile + tile // 2 - 6), name, fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.asarray(labels), grid], axis=1)).save(args.output, optimize=True)
    logging.info("wrote %s", args.output)
    return args.output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(get_args_parser().parse_args())
