"""Save and load what retrieval needs together: the library, the encoder that made its embeddings, the regimes.

An index is meaningless without the encoder that produced its vectors, so they travel as one directory:

```
DIR/library/      PatternLibrary.save (index.bin, meta.npz, library.json, SHA256SUMS)
DIR/encoder.json  PatternEncoder.to_dict
DIR/regimes.json  RegimeModel.to_dict
DIR/SHA256SUMS    for encoder.json and regimes.json
```
"""

from __future__ import annotations

import json
from pathlib import Path

from dualhrq.config import PatternsConfig
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.patterns.checksums import verify_checksums, write_checksums
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import RegimeModel

_JSON_FILES = ("encoder.json", "regimes.json")


def save_artifacts(directory: str | Path, library: PatternLibrary, encoder: PatternEncoder,
                   regimes: RegimeModel) -> Path:
    if encoder.embed_dim != library.dim:
        raise ConfigurationError(f"patterns.embed_dim: the encoder embeds to {encoder.embed_dim} dims but the library "
                                 f"holds {library.dim}")
    out = Path(directory)
    library.save(out / "library")
    (out / "encoder.json").write_text(json.dumps(encoder.to_dict()))
    (out / "regimes.json").write_text(json.dumps(regimes.to_dict()))
    write_checksums(out, _JSON_FILES)
    return out


def load_artifacts(directory: str | Path,
                   cfg: PatternsConfig | None = None) -> tuple[PatternLibrary, PatternEncoder, RegimeModel]:
    """Checksums verified first; ``cfg`` supplies the library's tunables (see ``PatternLibrary.load``)."""
    src = Path(directory)
    verify_checksums(src, _JSON_FILES)
    library = PatternLibrary.load(src / "library", cfg)
    try:
        encoder = PatternEncoder.from_dict(json.loads((src / "encoder.json").read_text()))
        regimes = RegimeModel.from_dict(json.loads((src / "regimes.json").read_text()))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{src}: unreadable pattern artifact: {e}") from None
    if encoder.embed_dim != library.dim:
        raise ModelLoadError(f"{src}: encoder embeds to {encoder.embed_dim} dims, the library holds {library.dim}")
    return library, encoder, regimes
