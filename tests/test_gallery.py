"""The gallery: base and unlearned images side by side, also when a target has fewer images than
eval.gallery_per_class (it used to fail on the grid after the whole run)."""

import torch
from PIL import Image

from diffunlearn.evaluation.gallery import PAD, write_gallery


def test_a_target_with_fewer_images_than_the_gallery_width_gets_a_shorter_row(tmp_path):
    gray, black = torch.full((3, 1, 8, 8), 0.5), torch.zeros(2, 1, 8, 8)  # the background is white
    rows = [(7, "seven", True), (3, "three", False)]
    write_gallery(tmp_path, rows, {7: gray, 3: gray[:2]}, {7: black[:1].expand(3, -1, -1, -1), 3: black},
                  {7: [1, 2, 3], 3: [4, 5]})
    assert Image.open(tmp_path / "base_7.png").size == (3 * 64, 64)
    assert Image.open(tmp_path / "unlearned_3.png").size == (2 * 64, 64)
    grid = Image.open(tmp_path / "grid.png").convert("L")
    first_unlearned = grid.width - 3 * (64 + PAD)  # the unlearned block is as wide as the longest row
    row_3 = 20 + (64 + PAD) + 32  # header, one row, half a cell
    assert grid.getpixel((first_unlearned + 32, row_3)) == 0, "row 3's unlearned images start in the unlearned block"
    assert grid.getpixel((first_unlearned - 2 * PAD - 32, row_3)) == 255, "row 3 has no third base image"
    assert grid.getpixel((first_unlearned - 2 * PAD - 32, row_3 - 64 - PAD)) == 128, "row 7 has a third base image"
    assert (tmp_path / "index.html").read_text().count("<img") == 4
