from pathlib import Path

import pytest

from dualhrq.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return load_config(ROOT / "config" / "hrm_tiny.yaml")


@pytest.fixture(scope="session")
def full_config() -> Config:
    return load_config(ROOT / "config" / "hrm_27m.yaml")
