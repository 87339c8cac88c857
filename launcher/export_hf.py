"""Export a checkpoint as a Hugging Face transformers folder (no custom code needed to load it).

    python launcher/export_hf.py RUN_DIR_OR_CHECKPOINT --output DIR [--tokenizer tokenizer.json] [--force]

The checkpoint may also be a consolidated file or a folder written by launcher/import_hf.py.
The architecture (GPT-2, Llama, Qwen3, GPT-NeoX or StableLM) is chosen from the model's options; see
llmtrain/checkpoint/hf/ (one spec per architecture) for the table and what is refused.
"""
import argparse
import sys

from llmtrain.checkpoint.load import run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a run folder (latest checkpoint), its checkpoints/ folder, checkpoints/"
                                       "global_stepN, a consolidated file or an imported folder")
    ap.add_argument("--output", required=True, help="the folder to write (must not exist unless --force)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one the run was trained with)")
    ap.add_argument("--force", action="store_true", help="replace an existing --output folder")
    args = ap.parse_args(argv)
    from llmtrain.checkpoint.hf import export

    export(args.checkpoint, args.output, tokenizer=args.tokenizer, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
