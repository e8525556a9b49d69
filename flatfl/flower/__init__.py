"""flatfl on Flower (``pip install flatfl[flower]``, flwr >= 1.42): FedMut as a Flower strategy,
a run recorder that writes flatfl's run directory from any Flower strategy, and a ClientApp that
runs flatfl's local training on its registry models and data sets.

* :class:`flatfl.flower.strategy.FedMutStrategy` -- FedMut (Hu et al., AAAI 2024) for Flower's
  Message API, driving flatfl's own :class:`flatfl.algorithms.fedmut.FedMut` (one mutation code).
* :class:`flatfl.flower.sampling.SeededFedAvg` / ``SeededFedProx`` -- Flower's FedAvg and FedProx on
  flatfl's seeded client sample (the clients ``flatfl train`` trains).
* :class:`flatfl.flower.recorder.RunRecorder` -- wraps any ``flwr.serverapp.strategy.Strategy``;
  ``flatfl landscape --ckpt`` and ``flatfl report`` read what it writes; ``resume=True`` continues it.
  A user's own model and data: :class:`flatfl.flower.subjects.UserModel`.
* :data:`flatfl.flower.client_app.app`, :data:`flatfl.flower.server_app.app` -- the ClientApp (train + query
  handlers) and ServerApp; ``make_client_app(config)`` / ``make_server_app(config)`` for a run config of
  your own (``flwr.simulation.run_simulation`` passes none).
* :class:`flatfl.flower.local_grid.LocalGrid` -- a Grid that runs a ClientApp in this process.

Only this package imports ``flwr``; the rest of flatfl never does.
"""
