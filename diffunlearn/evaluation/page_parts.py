"""What the HTML galleries share (the run gallery, `evaluation/gallery.py`, and the attack gallery,
`robustness/gallery.py`): the page shell with its style and layout self-check, image grids, and line plots drawn as
inline SVG (no plotting library, no script from the network).
"""

from __future__ import annotations

import html
import math

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageOps

from ..outputs import atomic_write

COLORS = ("#c0392b", "#2471a3", "#229954", "#7d3c98")
DASHES = ("", "6 3", "2 2", "8 3 2 3")  # overlapping series stay apart (base and unlearned often coincide)
STYLE = ("body{font-family:sans-serif;margin:12px;max-width:100%} img{image-rendering:pixelated;max-width:100%;"
         "height:auto} .forgotten{background:#fdd} td,th{padding:4px;vertical-align:middle}"
         "table{border-collapse:collapse} table.rows{width:100%;table-layout:fixed}"
         "table.rows td img{width:100%;height:auto} th{text-align:left}"
         ".num{text-align:right;font-variant-numeric:tabular-nums} .plots svg{max-width:100%;height:auto}"
         "p,td,th{overflow-wrap:anywhere} table.attacks{font-size:14px}")
# records layout facts on the page itself (no horizontal overflow, every image decoded) for automated checks
SELF_CHECK = ("<script>addEventListener('load',()=>{const d=document.documentElement;"
              "document.body.dataset.overflow=String(d.scrollWidth>d.clientWidth);"
              "document.body.dataset.imagesLoaded=String([...document.images].every(i=>i.complete&&"
              "i.naturalWidth>0))})</script>")


def html_document(title: str, body: str) -> str:
    """A whole page: the shared style and self-check, then `body` (HTML)."""
    return ("<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>{SELF_CHECK}{body}\n")


def to_pil(images: torch.Tensor, size: int = 64) -> list:
    """(N, C, H, W) in [0, 1] -> PIL images upscaled (nearest) to `size` pixels for viewing."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    out = []
    for a in arr:
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out.append(img.resize((size, size), Image.NEAREST) if img.width < size else img)
    return out


def write_image_grid(path, images: list, columns: int = 0, border: int = 0) -> None:
    """Save PIL `images` as one PNG, `columns` a row (0: all in one row), the last row filled with white cells;
    `border`: white pixels around each image (cells stay apart where the images have dark edges)."""
    columns = columns or len(images)
    rows = math.ceil(len(images) / columns)
    cells = [ImageOps.expand(img.convert("RGB"), border=border, fill="white") for img in images]
    cells += [Image.new("RGB", cells[0].size, "white")] * (rows * columns - len(cells))
    atomic_write(path, lambda tmp: make_image_grid(cells, rows, columns).save(tmp, format="PNG"))


def _ticks(low: float, high: float, values: list) -> list:
    """Axis ticks: every distinct value when there are few (the measured step counts), else low, middle, high."""
    distinct = sorted(set(values))
    return distinct if len(distinct) <= 8 else [low, (low + high) / 2, high]


def svg_plot(title: str, series: dict, x_label: str = "step", y_label: str = "", y_range=None, width: int = 440,
             height: int = 230) -> str:
    """Line plot of {name: [(x, y), ...]} with labelled axes, ticks and a legend; points are marked when there are
    few. `y_range`: (low, high) fixed (shares: (0, 1)), else the data's. '' when there is nothing to draw."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 58, 12, 26, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    base_y = height - bottom

    def at(x, y):
        return left + (x - x0) / (x1 - x0) * plot_w, base_y - (y - y0) / (y1 - y0) * plot_h

    esc = html.escape
    parts = [f"<svg viewBox='0 0 {width} {height}' width='{width}' role='img' aria-label='{esc(title)}' "
             "font-family='sans-serif'>",
             f"<text x='{left}' y='16' font-size='13'>{esc(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' stroke='#999'/>",
             f"<text x='{left + plot_w / 2:.0f}' y='{base_y + 30}' font-size='11' text-anchor='middle' "
             f"class='x-label'>{esc(x_label)}</text>",
             f"<text transform='translate(13 {top + plot_h / 2:.0f}) rotate(-90)' font-size='11' "
             f"text-anchor='middle' class='y-label'>{esc(y_label)}</text>"]
    for x in _ticks(x0, x1, xs):  # 1. axes: ticks at the measured x values (or the ends) and the y range
        px = at(x, y0)[0]
        parts.append(f"<line x1='{px:.1f}' y1='{base_y}' x2='{px:.1f}' y2='{base_y + 4}' stroke='#999'/>"
                     f"<text x='{px:.1f}' y='{base_y + 15}' font-size='10' text-anchor='middle'>{x:g}</text>")
    for y in (y0, (y0 + y1) / 2, y1):
        py = at(x0, y)[1]
        parts.append(f"<text x='{left - 4}' y='{py + 3:.1f}' font-size='10' text-anchor='end'>{y:.3g}</text>")
    legend_x = left
    for i, (name, values) in enumerate(series.items()):  # 2. one line per series, its legend entry below the axes
        color, dash = COLORS[i % len(COLORS)], DASHES[i % len(DASHES)]
        style = f"stroke='{color}' stroke-width='1.8'" + (f" stroke-dasharray='{dash}'" if dash else "")
        coords = [at(*p) for p in values]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f"<polyline class='series' data-name='{esc(name)}' fill='none' {style} points='{path}'/>")
        if len(coords) <= 30:
            parts.extend(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{2.5 + i}' fill='none' stroke='{color}'/>"
                         for x, y in coords)
        legend_y = height - 8
        parts.append(f"<line x1='{legend_x}' y1='{legend_y - 4}' x2='{legend_x + 22}' y2='{legend_y - 4}' {style}/>"
                     f"<text x='{legend_x + 26}' y='{legend_y}' font-size='11' class='legend'>{esc(name)}</text>")
        legend_x += 40 + 6 * len(name)  # ~6 px per character
    return "".join(parts) + "</svg>"
