"""The lab in one import: evaluation, sweeps and the per-layer search.

>>> from qlab.ext import lab, data, zoo
>>> model = zoo.train("lenet5", "digits")                                    # doctest: +SKIP
>>> lab.evaluate(model, data.digits("test"), qlab.Plan(extrinsic="fixed(8,4)"))  # doctest: +SKIP
"""
from .evaluation import (  # noqa: F401
    Evaluator,
    check_dataset,
    data_fingerprint,
    evaluate,
    model_fingerprint,
    quantizable_layers,
    relative_accuracy,
)
from .search import SearchResult, compression_factor, greedy_order, search_layers  # noqa: F401
from .sweep import best_fraction_bits, fixed_spec, sweep  # noqa: F401
