"""Preprocessing for any model: presets and command-line overrides, what the input shape tells, where
each value came from, and `--preprocess auto`, which chooses by evidence."""

from ftonnx.preprocess.presets import AUTO, PRESETS, PreprocessFlags, pixel_units
from ftonnx.preprocess.resolve import Resolution, describe, facts_from_shape, input_facts, resolve, resolve_facts

__all__ = ["AUTO", "PRESETS", "PreprocessFlags", "Resolution", "describe", "facts_from_shape", "input_facts",
           "pixel_units", "resolve", "resolve_facts"]
