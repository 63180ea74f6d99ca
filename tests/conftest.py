"""Shared fixtures: the tiny model for fast unit tests, the zoo model, and the real data sets."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from helpers import HYMENOPTERA, build_tiny_model, require_torch, write_colours


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    return build_tiny_model()


@pytest.fixture
def tiny_model_path(tmp_path: Path, tiny_model: onnx.ModelProto) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved once per session (tests that train on it write elsewhere)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(build_tiny_model(), str(path))
    return path


@pytest.fixture(scope="module")
def colours(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_colours` once per module, with (train, val) images per class from its COLOUR_IMAGES."""
    train, val = getattr(request.module, "COLOUR_IMAGES", (12, 6))
    return write_colours(tmp_path_factory.mktemp("colours"), train=train, val=val)


@pytest.fixture(scope="session")
def zoo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 exported once per session (skips without torch, which the zoo's export needs)."""
    require_torch()
    from ftonnx import zoo

    path = tmp_path_factory.mktemp("zoo") / "lite0.onnx"
    zoo.export_model("efficientnet-lite0", path)
    return path


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real data not found at {HYMENOPTERA} (../shared is absent)")
    return HYMENOPTERA
