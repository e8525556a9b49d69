"""flatfl's analysis side: reads run directories (checkpoints + ``run.json``) only.

It imports the checkpoint format (``flatfl.checkpoint``), the model registry
(``flatfl.models``) and the dataset registry (``flatfl.data``) -- never trainer internals.
"""
