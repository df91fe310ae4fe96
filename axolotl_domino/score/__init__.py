"""The scorecard of a synthetic dataset: diversity, memorisation of the references, fidelity to the domain.

One module per question (`diversity.py`, `memorization.py`, `fidelity.py`), the sentence embedder
they share (`embedder.py`), the plots (`plots.py`), the markdown (`report.py`), and `scorecard.py`,
which computes all of it for a dataset and writes the files.
"""

from axolotl_domino.score.scorecard import run_scorecard, scorecard

__all__ = ["run_scorecard", "scorecard"]
