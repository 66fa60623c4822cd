"""Tests of scripts/window_domains.py: the derived val splits against hand-made images
and an independent bilinear (align_corners) interpolation written here in numpy."""
import os
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import window_domains  # noqa: E402


def bilinear_align_corners(img, h, w):
    """Each output pixel (y, x) samples the input at (y (H-1)/(h-1), x (W-1)/(w-1))."""
    H, W = img.shape[:2]
    out = np.zeros((h, w, img.shape[2]))
    for y in range(h):
        for x in range(w):
            sy, sx = y * (H - 1) / (h - 1), x * (W - 1) / (w - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x1]
                         + fy * (1 - fx) * img[y1, x0] + fy * fx * img[y1, x1])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class WindowDomains(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = self.tmp.name
        rng = np.random.default_rng(7)
        self.image = rng.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)
        self.label = rng.integers(0, 34, size=(8, 16), dtype=np.uint8)
        self.target = os.path.join(root, "target")
        for sub, name, arr in (("leftImg8bit", "aa_000002_000019_leftImg8bit.png", self.image),
                               ("gtFine", "aa_000002_000019_gtFine_labelIds.png", self.label)):
            os.makedirs(os.path.join(self.target, sub, "val", "aa"))
            Image.fromarray(arr).save(os.path.join(self.target, sub, "val", "aa", name))
        self.out = os.path.join(root, "out")
        window_domains.make(self.target, self.out)

    def tearDown(self):
        self.tmp.cleanup()

    def read(self, sub, split, name):
        return np.array(Image.open(os.path.join(self.out, "target", sub, split, "aa", name)))

    def test_upsample_matches_an_independent_bilinear(self):
        img = np.random.default_rng(3).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
        got = window_domains.upsample(img, 9, 13).astype(int)
        self.assertLessEqual(np.abs(got - bilinear_align_corners(img, 9, 13)).max(), 1)

    def test_windows_tile_the_image_and_keep_the_key_pattern(self):
        # window k of sequence 2 is sequence 2 * 4 + k; the grid's corners in row-major order
        for k, (y, x) in enumerate([(0, 0), (0, 8), (4, 0), (4, 8)]):
            key = f"aa_{8 + k:06d}_000019"
            img = self.read("leftImg8bit", "windows", key + "_leftImg8bit.png")
            lab = self.read("gtFine", "windows", key + "_gtFine_labelIds.png")
            crop = self.image[y:y + 4, x:x + 8]
            self.assertEqual(img.shape, (8, 16, 3))
            np.testing.assert_array_equal(img[0, 0], crop[0, 0])      # corners map to corners
            np.testing.assert_array_equal(img[-1, -1], crop[-1, -1])
            self.assertLessEqual(np.abs(img.astype(int) - bilinear_align_corners(crop, 8, 16)).max(), 1)
            np.testing.assert_array_equal(lab[::2, ::2], self.label[y:y + 4, x:x + 8])
            np.testing.assert_array_equal(lab[1::2, 1::2], self.label[y:y + 4, x:x + 8])

    def test_smoothed_keeps_the_label_and_samples_every_other_pixel(self):
        img = self.read("leftImg8bit", "smoothed", "aa_000002_000019_leftImg8bit.png")
        lab = self.read("gtFine", "smoothed", "aa_000002_000019_gtFine_labelIds.png")
        np.testing.assert_array_equal(lab, self.label)
        sub = self.image[::2, ::2]
        self.assertLessEqual(np.abs(img.astype(int) - bilinear_align_corners(sub, 8, 16)).max(), 1)

    def test_val_is_the_original_split(self):
        np.testing.assert_array_equal(
            self.read("leftImg8bit", "val", "aa_000002_000019_leftImg8bit.png"), self.image)


if __name__ == "__main__":
    unittest.main()
