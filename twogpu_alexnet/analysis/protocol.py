"""The pre-registered Figure 3 protocol's numbers (docs/specialization.md), in a module without torch so
that ``kernels --help`` shows them without importing it."""

THRESHOLD = 0.5  # a kernel is "colour-specific" when more than half its energy is colour (descriptive counts)
ALPHA = 0.01  # the protocol: a run splits when the permutation p of r is below this ...
MIN_EFFECT = 0.5  # ... and |rank-biserial r| is at least this
PERMUTATIONS = 0  # 0: the exact permutation distribution; > 0: that many random permutations
MAX_PERMUTATIONS = 1_000_000
BASELINE = 2 / 3  # mean score of kernels with i.i.d. random weights (W at init); no chance level for L
