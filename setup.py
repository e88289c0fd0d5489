"""Build darts_fast and its compiled extension darts_fast._C.

The extension is built against the torch that is already installed, so install with
``pip install --no-build-isolation .`` (an isolated build would fetch a different torch).

Environment switches:
  FORCE_CUDA=1        build the CUDA kernels even when no GPU is visible (needs nvcc / CUDA_HOME)
  DARTS_FAST_CPU_ONLY=1  build the CPU kernels only, even when CUDA is available
  DARTS_FAST_SANITIZE=1  build the CPU kernels only, instrumented with AddressSanitizer and
                         UndefinedBehaviorSanitizer (any finding aborts); load it into a process
                         that preloads the sanitizer runtimes, as .ci/run does
  TORCH_CUDA_ARCH_LIST   the usual torch variable; with no GPU visible it defaults to
                         "8.0;9.0+PTX" (machine code for A100 and H100/H200, and PTX of the
                         highest that newer GPUs compile at load, as torch's own default does)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - exercised only on a machine without torch
    sys.exit(
        "darts_fast builds against an installed PyTorch, and none was found.\n"
        "Install torch first, then build without isolation:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation ."
    )


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("DARTS_FAST_CPU_ONLY") or _flag("DARTS_FAST_SANITIZE"):
        return False
    have_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("FORCE_CUDA"):
        if not have_toolkit:
            sys.exit(
                "FORCE_CUDA=1 but this torch has no CUDA support or no CUDA toolkit was found "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}). "
                "Install a CUDA build of torch and set CUDA_HOME to the toolkit root."
            )
        return True
    return have_toolkit


def _extension():
    root = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -g0: Python's CFLAGS carry -g, which doubles compile time and bloats the module.
    cxx = ["-O3", "-g0", "-fopenmp"]
    link = ["-fopenmp"]
    if _flag("DARTS_FAST_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        cxx = ["-O1", "-g", "-fno-omit-frame-pointer", "-fopenmp"] + sanitize
        link += sanitize
    kwargs = dict(include_dirs=[os.path.join(root, "csrc")], extra_link_args=link)
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        return cpp_extension.CUDAExtension(
            "darts_fast._C",
            sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            **kwargs,
        )
    return cpp_extension.CppExtension(
        "darts_fast._C", sources, extra_compile_args=cxx, **kwargs
    )


setup(
    name="darts_fast",
    version="0.1.0",
    description="Fused kernels and drop-in classes for DARTS architecture search",
    packages=find_packages(include=["darts_fast", "darts_fast.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "numpy", "matplotlib", "filelock", "tqdm", "tensorboard"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["darts-fast=darts_fast.cli.main:main"]},
)
