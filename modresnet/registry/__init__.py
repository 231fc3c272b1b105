"""Named, versioned models in MLflow's Model Registry: what `modresnet serve models:/...`
serves, with lineage, aliases (champion, candidate), an accuracy gate and an alias history.
Plain Python over MLflow (imported when a registry opens); no Ray."""

from modresnet.registry.gate import GATE_TOLERANCE, GateError
from modresnet.registry.refs import (
    CANDIDATE,
    CHAMPION,
    ModelRef,
    RegistryError,
    is_ref,
    parse_ref,
)
from modresnet.registry.store import (
    HISTORY_KEPT,
    Registry,
    Version,
    open_registry,
    resolve_checkpoint,
)

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "GATE_TOLERANCE",
    "HISTORY_KEPT",
    "GateError",
    "ModelRef",
    "Registry",
    "RegistryError",
    "Version",
    "is_ref",
    "open_registry",
    "parse_ref",
    "resolve_checkpoint",
]
