"""flatfl: train federated learning algorithms, save every round, measure the loss landscape.

Data flows trainer -> checkpoint files -> analysis. The trainer lives in this package
(``flatfl.trainer``, ``flatfl.algorithms``), the on-disk contract in ``flatfl.checkpoint``
(documented in ``docs/checkpoint-format.md``), and the model registry in ``flatfl.models``.
"""

__version__ = "0.1.0"
