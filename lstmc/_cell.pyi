# Type stub for the compiled core (src/_cell.pyx); its C-level API is _cell.pxd.
from typing import Any, Optional, Tuple

import numpy as np

class CellWork:
    typenum: int
    D: int
    H: int
    def __init__(self, dtype: Any, D: int, H: int) -> None: ...

class TimeWork:
    typenum: int
    D: int
    H: int
    cached: bool
    generation: int
    def __init__(self, dtype: Any, D: int, H: int) -> None: ...
    def forward(self, layer: Any, xs: np.ndarray, h0: Optional[np.ndarray],
                c0: Optional[np.ndarray], train: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def backward(self, layer: Any, dhs: Any) -> Tuple[np.ndarray, np.ndarray]: ...

def cell_forward(layer: Any, x: Any, h_prev: Any, c_prev: Any,
                 out: Optional[Tuple[np.ndarray, np.ndarray]],
                 train: bool) -> Tuple[np.ndarray, np.ndarray]: ...
def cell_backward(layer: Any, dh_next: Any, dc_next: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
