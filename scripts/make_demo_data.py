#!/usr/bin/env python3
"""Builds data/demo/ from Fashion-MNIST (MIT licence; Debian package dataset-fashion-mnist).

Two classes that are hard to tell apart: Pullover (label 2) and Coat (label 4).
train/coat/*.png and train/pullover/*.png take the first 1000 images of each class from the
training set; test/<n>.png holds 250 of each class from the test set, shuffled with a fixed
seed, with the answers in test_labels.csv (id,label; coat = 0, pullover = 1, the order of the
sorted class folders). Only the standard library is used.

Usage: python3 scripts/make_demo_data.py [/usr/share/datasets/fashion-mnist] [data/demo]
"""
import gzip
import os
import random
import struct
import sys
import zlib

SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
DST = sys.argv[2] if len(sys.argv) > 2 else "data/demo"
CLASSES = {2: "pullover", 4: "coat"}
TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 250


def read_idx(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        magic, n = struct.unpack(">II", f.read(8))
        if magic == 2051:
            rows, cols = struct.unpack(">II", f.read(8))
            data = f.read()
            return [data[i * rows * cols:(i + 1) * rows * cols] for i in range(n)], (rows, cols)
        return list(f.read()), None


def png(path, pixels, rows, cols):
    raw = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    chunk = lambda tag, body: struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)  # 8-bit greyscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def pick(images, labels, per_class):
    out = []
    for label, name in sorted(CLASSES.items()):
        idx = [i for i, l in enumerate(labels) if l == label][:per_class]
        out += [(images[i], name) for i in idx]
    return out


def main():
    train_x, (rows, cols) = read_idx("train-images-idx3-ubyte.gz")
    train_y, _ = read_idx("train-labels-idx1-ubyte.gz")
    test_x, _ = read_idx("t10k-images-idx3-ubyte.gz")
    test_y, _ = read_idx("t10k-labels-idx1-ubyte.gz")
    names = sorted(CLASSES.values())
    for name in names:
        os.makedirs(os.path.join(DST, "train", name), exist_ok=True)
    os.makedirs(os.path.join(DST, "test"), exist_ok=True)
    counters = {name: 0 for name in names}
    for pixels, name in pick(train_x, train_y, TRAIN_PER_CLASS):
        png(os.path.join(DST, "train", name, f"{counters[name]}.png"), pixels, rows, cols)
        counters[name] += 1
    test = pick(test_x, test_y, TEST_PER_CLASS)
    random.Random(42).shuffle(test)
    with open(os.path.join(DST, "test_labels.csv"), "w") as f:
        f.write("id,label\n")
        for i, (pixels, name) in enumerate(test):
            png(os.path.join(DST, "test", f"{i}.png"), pixels, rows, cols)
            f.write(f"{i},{names.index(name)}\n")


if __name__ == "__main__":
    main()
