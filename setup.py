"""Build lstmc's extension. Metadata lives in pyproject.toml.

The Cython sources are in src/; the extension is built as lstmc._cell, and the
.pxd files are installed beside it (lstmc/_cell.pxd) so that other Cython code
can `from lstmc._cell cimport lstm_step_forward`.

LSTMC_DEBUG=1 turns bounds checks back on and builds without optimisation.
"""
import os
import shutil
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PXDS = ["_cell.pxd", "_blas.pxd"]
DEBUG = os.environ.get("LSTMC_DEBUG", "") not in ("", "0")

# Cython directives, in one place (no file sets its own).
directives = {"language_level": 3, "boundscheck": False, "wraparound": False,
              "initializedcheck": False, "nonecheck": False, "cdivision": True}
if DEBUG:
    directives.update(boundscheck=True, wraparound=True, initializedcheck=True)

if sys.platform == "win32":
    cflags = ["/O2"]
elif DEBUG:
    cflags = ["-O0", "-g"]
else:
    # -O3: vectorize the gate loops. -fno-trapping-math / -fno-math-errno: let
    # gcc vectorize selects and skip errno. Not -ffast-math: it would break the
    # NaN and Inf semantics lstmc promises.
    cflags = ["-O3", "-fno-trapping-math", "-fno-math-errno"]


def pxd_include_dir():
    """A folder holding lstmc/*.pxd, for Cython's include path: Cython looks for
    the .pxd of module lstmc._cell as lstmc/_cell.pxd, and only with it does it
    export the kernels that _cell.pxd declares (the C-level API)."""
    root = os.path.join(HERE, "build", "pxd")
    os.makedirs(os.path.join(root, "lstmc"), exist_ok=True)
    for name in PXDS:
        shutil.copy(os.path.join(HERE, "src", name), os.path.join(root, "lstmc", name))
    return root


class build_py_with_pxd(build_py):
    """Install src/*.pxd as lstmc/*.pxd (the C-level API)."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "lstmc")
        os.makedirs(dest, exist_ok=True)
        for name in PXDS:
            shutil.copy(os.path.join(HERE, "src", name), os.path.join(dest, name))



def extension(name, depends, module=None):
    """Extension `module` (default lstmc.<name>) built from src/<name>.pyx."""
    return Extension(
        module or f"lstmc.{name}",
        sources=[f"src/{name}.pyx"],
        include_dirs=["src", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=cflags,
        depends=depends,
    )


extensions = [
    # The kernels, the sequence loop and the entry points of the layers.
    extension("_cell", ["src/_gates.h", "src/_blas.pxd", "src/_cell.pxd"]),
    # The benchmark's BLAS floor: the same BLAS calls, looped in C.
    extension("_floor", ["src/_blas.pxd", "src/_gates.h"], module="lstmc.bench._floor"),
]

setup(
    ext_modules=cythonize(extensions, include_path=[pxd_include_dir(), "src"], compiler_directives=directives),
    cmdclass={"build_py": build_py_with_pxd},
)
