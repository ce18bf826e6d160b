# Type stub for the per-layer work objects (src/_work.pyx.in); the kernels'
# C-level API is _cell.pxd (lstmc._cell has no Python-level API).
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np

class _CellWork:
    input_size: int
    hidden_size: int
    def __init__(self, D: int, H: int) -> None: ...
    def forward(self, layer: Any, x: Any, h_prev: Any, c_prev: Any,
                out: Optional[Tuple[np.ndarray, np.ndarray]],
                train: bool) -> Tuple[np.ndarray, np.ndarray]: ...
    def backward(self, layer: Any, dh_next: Any,
                 dc_next: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...

class _TimeWork:
    input_size: int
    hidden_size: int
    cached: bool
    generation: int
    def __init__(self, D: int, H: int) -> None: ...
    def forward(self, layer: Any, xs: Any, lengths: Any, h0: Any, c0: Any, train: bool,
                most_threads: int = ...) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def backward(self, layer: Any, dhs: Any,
                 most_threads: int = ...) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...

class CellWorkFloat32(_CellWork): ...
class CellWorkFloat64(_CellWork): ...
class TimeWorkFloat32(_TimeWork): ...
class TimeWorkFloat64(_TimeWork): ...

CELL_WORK: Dict[np.dtype, Type[_CellWork]]
TIME_WORK: Dict[np.dtype, Type[_TimeWork]]
