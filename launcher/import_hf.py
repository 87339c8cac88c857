"""Import a Hugging Face transformers model folder (GPT-2, Llama, Mistral, Qwen3, GPT-NeoX/Pythia) as
this project's GPT: a folder that export_hf.py, generate.py, evaluate.py and
checkpoint.init_from all take.

    python launcher/import_hf.py HF_DIR --output OUT [--force]

The logits are checked against transformers (fp32, max difference <= 1e-4) before anything is
written; see llmtrain/checkpoint/hf/ (one spec per architecture, read both ways).
"""
import argparse
import sys

from llmtrain.checkpoint.load import run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="a local transformers model folder (config.json, weights, tokenizer.json)")
    ap.add_argument("--output", required=True, help="the folder to write (must not exist unless --force)")
    ap.add_argument("--force", action="store_true", help="replace an existing --output folder")
    args = ap.parse_args(argv)
    from llmtrain.checkpoint.hf import import_hf

    import_hf(args.hf_dir, args.output, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
