"""recjax: teach language models recommendation knowledge (JAX/Flax, SeqIO)."""
import setuptools

setuptools.setup(
    name="recjax",
    version="0.1.0",
    description=("Recommendation-knowledge alignment, Item-Language Models and "
                 "RSLLM for FLAN-T5 in JAX/Flax, on SeqIO mixtures."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["recjax", "recjax.*",
                                               "seqio_tasks", "seqio_tasks.*"]),
    package_data={"": ["*.gin"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.4.30,<0.11",
        "jaxlib>=0.4.30,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.3,<0.3",
        "orbax-checkpoint>=0.9,<0.13",
        "seqio>=0.0.19,<0.1",
        "tensorflow>=2.16,<2.22",
        "tensorflow-text>=2.16,<2.22",
        "tensorflow-datasets>=4.9.4,<5",
        "gin-config>=0.5.0,<0.6",
        "sentencepiece>=0.2.0,<0.3",
        "numpy>=1.26,<3",
        "absl-py>=1.4",
        "safetensors>=0.4,<1",
        "msgpack>=1.0",
        "tensorstore>=0.1.60",
        "matplotlib>=3.7,<4",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["recjax=recjax.main:run"]},
)
