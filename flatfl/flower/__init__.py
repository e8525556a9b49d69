"""flatfl on Flower (``pip install flatfl[flower]``, flwr >= 1.42): FedMut as a Flower strategy,
a run recorder that writes flatfl's run directory from any Flower strategy, and a ClientApp that
runs flatfl's local training on its registry models and data sets.

* :class:`flatfl.flower.strategy.FedMutStrategy` -- FedMut (Hu et al., AAAI 2024) for Flower's
  Message API, driving flatfl's own :class:`flatfl.algorithms.fedmut.FedMut` (one mutation code).
* :class:`flatfl.flower.recorder.RunRecorder` -- wraps any ``flwr.serverapp.strategy.Strategy``;
  ``flatfl landscape --ckpt`` and ``flatfl report`` read what it writes.
* :data:`flatfl.flower.client_app.app` -- the ClientApp (train + query handlers).
* :class:`flatfl.flower.local_grid.LocalGrid` -- a Grid that runs a ClientApp in this process.

Only this package imports ``flwr``; the rest of flatfl never does.
"""
