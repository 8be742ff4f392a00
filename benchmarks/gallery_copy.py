"""Copy regenerated figures into the gallery (docs/gallery/): the PNG as a 1400-pixel-wide,
256-colour copy (as every gallery image is) and its meta.json beside it, both written
atomically.

    .venv/bin/python benchmarks/gallery_copy.py figs toy packing   # from `chaosgrad figures`
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from chaosgrad.io import read_json, write_bytes, write_json

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
WIDTH = 1400


def gallery_png(src: Path) -> bytes:
    """The PNG at ``src`` at most ``WIDTH`` pixels wide, quantised to 256 colours."""
    from PIL import Image

    im = Image.open(src).convert("RGB")
    if im.width > WIDTH:
        im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.LANCZOS)
    buf = io.BytesIO()
    im.quantize(256).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def copy(out: Path, name: str, as_name: str | None = None) -> None:
    """Figure ``name`` from the ``chaosgrad figures --out`` folder ``out`` into the gallery
    (as ``as_name``, e.g. learned_optimizer_paper)."""
    folder = Path(out) / name
    as_name = as_name or name
    write_bytes(GALLERY / f"{as_name}.png", gallery_png(folder / f"{name}.png"))
    write_json(GALLERY / f"{as_name}.meta.json", read_json(folder / "meta.json"))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for name in argv[1:]:
        copy(Path(argv[0]), name)
        print(f"{name}: {GALLERY / name}.png and .meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
