"""Shared fixtures: a tiny random-weight bundle for fast API tests, the shipped bundle for correctness."""
from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.bundle import save_bundle
from model.data import DISPLAY_NAMES
from model.network import NetworkConfig, build_network
from model.transforms import PreprocessConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "inference_image"
SHIPPED_BUNDLE = ROOT / "trained_model" / "tomato_leaf_lite0.pt"
DATA_ROOT = ROOT.parent / "shared" / "data" / "plantvillage_tomato"
CLASS_NAMES = sorted(DISPLAY_NAMES)


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


def class_of(path: Path) -> str:
    """Sample files are named <class>_<n>.jpg."""
    return path.stem.rsplit("_", 1)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory) -> Path:
    """Random-weight Lite0 at 64 px: same code paths as the real model, milliseconds per forward."""
    torch.manual_seed(0)
    network = build_network(NetworkConfig(num_classes=len(CLASS_NAMES))).eval()
    path = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    save_bundle(path, network, CLASS_NAMES, [DISPLAY_NAMES[c] for c in CLASS_NAMES],
                PreprocessConfig(image_size=64, resize_size=64), temperature=1.5, name="tiny-test-model")
    return path


@pytest.fixture(scope="session")
def shipped_bundle_path() -> Path:
    assert SHIPPED_BUNDLE.is_file(), f"the shipped model {SHIPPED_BUNDLE} is missing"
    return SHIPPED_BUNDLE


@pytest.fixture(scope="session")
def shipped_bundle(shipped_bundle_path):
    from inference import load_bundle

    return load_bundle(shipped_bundle_path, device="cpu")


@pytest.fixture(scope="session")
def leaf_bytes() -> bytes:
    return sample_files()[0].read_bytes()


@pytest.fixture
def make_app(tiny_bundle_path, tmp_path):
    """Build an app on the tiny model with per-test overrides."""
    from flask_server import create_app

    def factory(**overrides):
        config = {"MODEL_PATH": str(tiny_bundle_path), "FEEDBACK_DIR": str(tmp_path / "feedback"), "TESTING": True,
                  "TORCH_THREADS": 1, **overrides}
        return create_app(config)

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
