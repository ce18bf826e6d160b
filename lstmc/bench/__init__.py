"""``python -m lstmc bench``: how fast lstmc is, next to what a user would otherwise run.

Method
------
Everything is measured in ONE process. For each case every contender (lstmc's calls,
the NumPy reference, torch, onnxruntime, the compiled BLAS floor) is first calibrated
to a batch of repetitions lasting about ``--target-ms`` (one call at least), then the
batches run in alternating rounds: round r times every contender once, the order
rotated by one every two rounds and reversed every other round, so slow drifts of the
machine (other processes, frequency changes) hit all contenders alike. The times
reported are the medians over the rounds of the per-call time of each batch. A ratio
is the median over the rounds of the ratio within each round, not a ratio of two
medians. The pairs whose ratio the targets use most are listed next to each other
(lstmc's forward beside its floor, inference beside onnxruntime, backward beside its
floor), so that in most rounds they run back to back. ``--json`` writes every sample.
Batches that drift far from the target length are re-sized between rounds, and a
time budget (``--max-minutes``) is shared out among the cases: a case stops after its
share (but never before 3 rounds), and the tables say how many rounds ran. The
"noise" lines give the round-to-round spread, the header the load average. Whenever
the next batch belongs to another thread pool (SciPy's OpenBLAS, NumPy's OpenBLAS,
torch, onnxruntime) the rounds pause first, so that the idle threads of the last
library, still spinning, do not slow down the next one.

After the cell and the sequence sections, their targets (float32, stated for the
OpenBLAS variables unset) are listed with the measured ratio and ok/MISS. The exit
code is 0 unless a contender failed or computed something other than lstmc (each is
checked once before timing).

The models section runs a whole 2-layer bidirectional ``StackedLSTM`` on a padded
batch against onnxruntime (``sequence_lens``) and torch (``pack_padded_sequence``).

The threads section runs K independent ``TimeLSTM`` inferences on one Python thread
and on two (BLAS pinned to one thread), and reports the speed-up; the Dask section
what handing a scoring job to a local cluster costs.

Modules
-------
``cli``          arguments, the order of the sections, the JSON file
``timing``       contenders, batches, alternating rounds, medians and paired ratios
``contenders``   how lstmc, the NumPy reference, torch, onnxruntime and the floor are timed
``compare``      a section comparing contenders case by case, and its tables
``cell``, ``seq``, ``models``   those sections: cases, columns, ratios, targets
``threads``, ``dask``   the other two sections
``report``       tables, number formats, targets, header, JSON records
``environment``  cores, load, versions, BLAS pools, optional frameworks
``_floor``       (compiled) the BLAS floor: lstmc's BLAS calls looped in C
"""
from lstmc.bench.cli import main

__all__ = ["main"]
