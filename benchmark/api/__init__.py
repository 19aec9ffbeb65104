"""The api room: what a method is. methods/ and third-party plug-ins import it as
`medad_bench.api` (the names below); the rest of the suite imports its modules directly.

- contract.py     Method (fit -> self, predict -> Prediction), TrainSet, Prediction, Progress,
                  configs, the registry (register_method, get_method), `timed`
- training.py     IterativeMethod: the loop, checkpoints, AUCp selection, resume
- seeding.py      one place that seeds every generator (Method.fit seeds itself, so seeding
                  belongs to the contract rather than to the engine)
- conformance.py  check_method: the contract as checks, for built-ins and plug-ins

May import: stats (the AUCp of training, the competence checks of conformance).
"""

from medad_bench.api.contract import (
    PROFILES,
    TRAINING_SETS,
    Images,
    LabelledSplit,
    Method,
    NotFittedError,
    Prediction,
    Progress,
    TrainSet,
    available_methods,
    config_from_params,
    get_method,
    make_config,
    parse_method_list,
    register_method,
    timed,
)

MAY_IMPORT: tuple[str, ...] = ("stats",)

__all__ = ["PROFILES", "TRAINING_SETS", "Images", "LabelledSplit", "Method", "NotFittedError",
           "Prediction", "Progress", "TrainSet", "available_methods", "config_from_params",
           "get_method", "make_config", "parse_method_list", "register_method", "timed"]
