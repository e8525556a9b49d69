"""flatfl's numeric analysis -- the ground floor, usable on any PyTorch model.

Curvature operators, eigen/trace/density solvers, sharpness, loss-surface directions and grids,
the spread of models around a centre, statistics for verdicts, and the plots of those results.
It imports nothing of flatfl's trainer side (run directories, checkpoints, CLI) and raises plain
exceptions; reading runs and writing files live in :mod:`flatfl.runs`.
"""
