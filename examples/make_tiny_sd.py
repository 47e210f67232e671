"""Write a tiny random Stable Diffusion folder (32x32 images, about 1.2 M parameters) to try the
text-to-image path offline: `python examples/make_tiny_sd.py tiny-sd`. Its images are noise; the
folder has the layout of a real checkpoint (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/), so every command that takes a Stable Diffusion folder takes it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.diffusion.text import build_tiny  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        raise SystemExit("usage: python examples/make_tiny_sd.py OUT (OUT must not exist)")
    print(f"wrote {build_tiny(Path(sys.argv[1]))}")
