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
    # Each dependency is bounded to the range the test suite has passed on (lower bound: the
    # version CI ran); README's "Tested versions" says how to try newer ones.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.4,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "transformers>=5.24,<6",
        "huggingface_hub>=2.4,<3",  # Hub ids (pojax.hub)
        "tensorflow-datasets>=4.9.10,<5",
        "grain>=0.2.18,<0.3",
        "ml_collections>=1.1,<2",
        "absl-py>=2.5,<3",
        "tqdm>=4.70,<5",
        "matplotlib>=3.11,<4",
        "tensorboardX>=2.6.5,<3",  # TensorBoard event files (pojax.train.tensorboard)
    ],
    extras_require={
        # torch is pinned exactly: a CPU wheel of 2.13.0 is on disk; anything else pulls CUDA.
        "test": ["pytest>=9.2,<10", "pytest-xdist>=3.8,<4", "torch==2.13.0", "trl>=1.16,<1.17", "nbclient", "nbformat", "ipykernel",
                 # real tokenizer files for tests/data/real_tokenizers.py (no hub in tests)
                 "llama-models", "mistral-common", "tiktoken", "sentencepiece",
                 "wandb>=0.31,<1",  # logging.wandb, tested in W&B's offline mode
                 "lm-eval==0.4.13"],  # pojax.eval.lm_eval, tested against lm-eval's own hf model
        "tpu": ["jax[tpu]>=0.10.2,<0.11", "gcsfs", "google-cloud-storage"],  # gs:// workdirs: epath (gcsfs) and orbax (google-cloud-storage)
        "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
        "tensorboard": ["tensorboard"],  # the viewer of workdir/tensorboard (tensorboardX writes the event files)
        "wandb": ["wandb>=0.31,<1"],  # logging.wandb=True (pojax.train.wandb_log)
        # pojax.eval.lm_eval / eval.lm_eval_tasks; exact: PojaxLM subclasses lm-eval's TemplateLM and uses its helpers
        "eval": ["lm-eval==0.4.13"],
    },
)
