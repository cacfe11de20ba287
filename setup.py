"""pojax: preference optimization of language models in JAX/Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="pojax",
    version="0.1.0",
    description="Preference optimization (DPO family, KTO, ELBO-KTO, DiffPO) for LMs in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pojax", "pojax.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax",
        "flax>=0.12.4",
        "optax",
        "orbax-checkpoint",
        "transformers",
        "tensorflow-datasets",
        "grain",
        "ml_collections",
        "absl-py",
        "tqdm",
        "matplotlib",
        "tensorboardX",  # TensorBoard event files (pojax.train.tensorboard)
    ],
    extras_require={
        # torch is pinned exactly: a CPU wheel of 2.13.0 is on disk; anything else pulls CUDA.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "trl", "nbclient", "nbformat", "ipykernel",
                 # real tokenizer files for tests/data/real_tokenizers.py (no hub in tests)
                 "llama-models", "mistral-common", "tiktoken", "sentencepiece",
                 "wandb"],  # logging.wandb, tested in W&B's offline mode
        "tpu": ["jax[tpu]", "gcsfs", "google-cloud-storage"],  # gs:// workdirs: epath (gcsfs) and orbax (google-cloud-storage)
        "cuda": ["jax[cuda12]"],
        "tensorboard": ["tensorboard"],  # the viewer of workdir/tensorboard (tensorboardX writes the event files)
        "wandb": ["wandb"],  # logging.wandb=True (pojax.train.wandb_log)
    },
)
