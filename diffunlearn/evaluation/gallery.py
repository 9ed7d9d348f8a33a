"""Image galleries: base vs unlearned, forgotten vs retained classes, same seeds side by side."""

from __future__ import annotations

import html
import re
from pathlib import Path

from PIL import Image, ImageDraw

from .page_parts import html_document, to_pil, write_image_grid

PAD, LABEL_WIDTH, HEADER = 4, 120, 20


def file_stem(key, index: int) -> str:
    """A file-name stem for a row key that stays inside the gallery folder: class ids as they are, prompts as
    their row index plus a slug (a prompt like '../../x' must not name a path)."""
    if isinstance(key, int):
        return str(key)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(key)).strip("-")[:40]
    return f"{index:03d}-{slug}"


def write_gallery(folder, rows: list, base: dict, unlearned: dict, seeds: dict, head: str = "") -> None:
    """Write `grid.png` (one row per class: base | unlearned) and `index.html` (opening with `head`, HTML: the
    headline numbers, protocol and plots, see `gallery_page.page_head`).

    Args:
        folder: output folder (created).
        rows: (class id, class name, forgotten?) in display order.
        base, unlearned: {class id: images (k, C, H, W) in [0, 1]}, the same seeds in both.
        seeds: {class id: list of the k seeds}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid_rows, table = [], []
    for i, (cls, name, forgotten) in enumerate(rows):
        b, u = to_pil(base[cls]), to_pil(unlearned[cls])
        label = name if str(cls) == name else f"{cls} {name}"
        grid_rows.append((label + (" (forgotten)" if forgotten else ""), b, u))
        stem = file_stem(cls, i)
        write_image_grid(folder / f"base_{stem}.png", b)  # one row of k, or fewer if the target has fewer
        write_image_grid(folder / f"unlearned_{stem}.png", u)
        tag = "FORGOTTEN" if forgotten else "retained"
        table.append(f"<tr class='{tag.lower()}'><td>{html.escape(label)}</td><td>{tag}</td>"
                     f"<td><img src='base_{stem}.png'></td><td><img src='unlearned_{stem}.png'></td>"
                     f"<td>{seeds[cls][0]}..{seeds[cls][-1]}</td></tr>")
    labelled_grid(grid_rows).save(folder / "grid.png")
    (folder / "index.html").write_text(html_document(
        "diffunlearn gallery", f"<h1>Base vs unlearned, same seeds</h1>{head}"
        "<p>Each row: one class; left the base model, right the unlearned model, from identical initial noise."
        " <code>grid.png</code> has all rows (base | gap | unlearned).</p>"
        "<table class='rows'><colgroup><col style='width:14%'><col style='width:10%'><col style='width:33%'>"
        "<col style='width:33%'><col style='width:10%'></colgroup>"
        "<tr><th>class</th><th>status</th><th>base</th><th>unlearned</th><th>seeds</th></tr>"
        + "".join(table) + "</table>"))


def labelled_grid(rows: list) -> Image.Image:
    """One row per (label, base images, unlearned images), padded, with a header and row labels."""
    cell = rows[0][1][0].size[0]
    label_width = max(LABEL_WIDTH, 6 * max(len(r[0]) for r in rows) + 8)  # ~6 px per character
    block = max(len(r[1]) for r in rows) * (cell + PAD)
    width = label_width + 2 * block + 3 * PAD
    grid = Image.new("RGB", (width, HEADER + len(rows) * (cell + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((label_width + PAD, 4), "base", fill=(0, 0, 0))
    draw.text((label_width + block + 3 * PAD, 4), "unlearned (same seeds)", fill=(0, 0, 0))
    for r, (label, base, unlearned) in enumerate(rows):
        y = HEADER + r * (cell + PAD)
        draw.text((4, y + cell // 2 - 6), label, fill=(200, 0, 0) if "forgotten" in label else (0, 0, 0))
        for left, images in ((label_width + PAD, base), (label_width + block + 3 * PAD, unlearned)):
            for j, img in enumerate(images):
                grid.paste(img.convert("RGB"), (left + j * (cell + PAD), y))
    return grid
