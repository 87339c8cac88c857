"""The scaling laws, one module each. Every law's ``fit(pts, n_boot, seed, target_flops, targets,
level, ...)`` returns its typed result (``llmtrain.scaling.results``), with bootstrap intervals
on every estimate when n_boot > 0, the compute-optimal model for ``target_flops`` and what the law
predicts at each (N, D) of ``targets``:

- ``chinchilla``: approach 3, L(N, D) = E + A/N^alpha + B/D^beta (predicts the loss)
- ``isoflop``: approach 2, the minima of IsoFLOP profiles, N_opt = k_N C^a (predicts the optimum)
- ``kaplan``: L(N), L(D), L(C) on their frontiers (predicts each frontier's loss)
- ``task``: a downstream metric in two steps, the loss law then the metric from the loss

Shared: ``allocation`` (N_opt and D_opt as power laws of C, for approach 2 and Kaplan), the
batched solver ``llmtrain.scaling.optim`` and the intervals of ``llmtrain.scaling.bootstrap``.
"""
