"""Regenerate ``tokenizers_mm/embedded/photos/`` from Debian's ``plasma-workspace-wallpapers`` package.

    apt-get download plasma-workspace-wallpapers && dpkg -x plasma-workspace-wallpapers_*.deb /tmp/pw
    python scripts/vendor_photos.py /tmp/pw/usr/share/wallpapers

Each wallpaper's largest landscape image is downscaled (Lanczos) to a 384 px shorter side and stored as a
JPEG (quality 90); authors and licenses come from each wallpaper's ``metadata.json`` and go to
``ATTRIBUTION.md``. Photographs with sky, water and foliage, plus three drawn wallpapers (flat colours).
"""

from __future__ import annotations

import glob
import json
import os
import sys

from PIL import Image

NAMES = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
         "OneStandsOut", "Path", "summer_1am", "Volna", "MilkyWay", "Autumn", "Kay", "PastelHills")
SHORTER_SIDE = 384


def main(root: str, out: str = "tokenizers_mm/embedded/photos") -> None:
    os.makedirs(out, exist_ok=True)
    for name in NAMES:
        files = glob.glob(os.path.join(root, name, "contents", "images", "*"))
        landscape = [f for f in files if Image.open(f).width >= Image.open(f).height] or files
        src = max(landscape, key=lambda f: Image.open(f).width)
        img = Image.open(src).convert("RGB")
        scale = SHORTER_SIDE / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img.save(os.path.join(out, f"{name}.jpg"), quality=90)
        meta = json.load(open(os.path.join(root, name, "metadata.json")))
        plugin = meta.get("KPlugin", meta)
        authors = ", ".join(a.get("Name", "?") for a in plugin.get("Authors", []))
        print(f"- `{name}.jpg`: {authors}; {plugin.get('License')}; from `{os.path.basename(src)}`")


if __name__ == "__main__":
    main(sys.argv[1])
