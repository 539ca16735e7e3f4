#!/usr/bin/env python3
"""Prints every scalar TensorBoard's own reader finds in a run folder (`tag step value` lines)
and every image (`image tag step width height` lines).

Used by the test suite to check ablate's event files with the real TensorBoard:
    python3 scripts/tensorboard_scalars.py runs/<run>
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
for tag in acc.Tags()["scalars"]:
    for event in acc.Scalars(tag):
        print(tag, event.step, repr(event.value))
for tag in acc.Tags()["images"]:
    for event in acc.Images(tag):
        print("image", tag, event.step, event.width, event.height)
