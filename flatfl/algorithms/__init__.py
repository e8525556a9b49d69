"""Algorithm registry: ``--algo`` name -> class (with its frozen ``config_cls``)."""

from __future__ import annotations

from flatfl.algorithms.base import FederatedAlgorithm
from flatfl.algorithms.clusamp import CluSamp, CluSampConfig
from flatfl.algorithms.fedasam import FedASAM, FedASAMConfig
from flatfl.algorithms.fedaux import FedAUX, FedAUXConfig
from flatfl.algorithms.fedavg import FedAvg, FedAvgConfig
from flatfl.algorithms.fedcluster import FedCluster, FedClusterConfig
from flatfl.algorithms.feddf import FedDF, FedDFConfig
from flatfl.algorithms.fedgen import FedGen, FedGenConfig
from flatfl.algorithms.fedlesam import FedLESAM, FedLESAMConfig
from flatfl.algorithms.fedmut import FedMut, FedMutConfig
from flatfl.algorithms.fedprox import FedProx, FedProxConfig
from flatfl.algorithms.fedsam import FedSAM, FedSAMConfig
from flatfl.algorithms.fedswa import FedSWA, FedSWAConfig
from flatfl.algorithms.mofedsam import MoFedSAM, MoFedSAMConfig
from flatfl.algorithms.scaffold import Scaffold, ScaffoldConfig
from flatfl.errors import UserError

ALGORITHMS: dict[str, type[FederatedAlgorithm]] = {
    cls.name: cls
    for cls in (
        FedAvg, FedMut, FedProx, Scaffold, CluSamp, FedCluster, FedDF, FedGen, FedAUX,
        FedSAM, FedASAM, MoFedSAM, FedSWA, FedLESAM,
    )
}  # fmt: skip


def get_algorithm(name: str) -> type[FederatedAlgorithm]:
    if name not in ALGORITHMS:
        raise UserError(f"--algo: unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


__all__ = [
    "ALGORITHMS",
    "CluSamp",
    "CluSampConfig",
    "FedASAM",
    "FedASAMConfig",
    "FedAvg",
    "FedAUX",
    "FedAUXConfig",
    "FedAvgConfig",
    "FedCluster",
    "FedClusterConfig",
    "FedDF",
    "FedDFConfig",
    "FedGen",
    "FedGenConfig",
    "FedLESAM",
    "FedLESAMConfig",
    "FedMut",
    "FedMutConfig",
    "FedProx",
    "FedProxConfig",
    "FedSAM",
    "FedSAMConfig",
    "FedSWA",
    "FedSWAConfig",
    "MoFedSAM",
    "MoFedSAMConfig",
    "Scaffold",
    "ScaffoldConfig",
    "get_algorithm",
]
