"""The input flags every data_prep script declares: --text-key, --id-key, --hf-config, --hf-split."""
from __future__ import annotations

from .base import DEFAULT_TEXT_KEY

READER_OPTIONS = ("text_key", "id_key", "hf_config", "hf_split")


def add_input_args(parser):
    """Add --text-key, --id-key, --hf-config, --hf-split to an argparse parser (every data_prep
    script declares them through this); `reader_options(args)` turns them into the keyword
    arguments of `read_documents` / `check_input`."""
    g = parser.add_argument_group("input columns and Hugging Face data sets")
    g.add_argument("--text-key", default=DEFAULT_TEXT_KEY,
                   help="the text field/column of JSONL, Parquet and datasets inputs (default: text)")
    g.add_argument("--id-key", default=None,
                   help="the id field/column (default: 'id' when present, else <name>:<row>); a named one must exist")
    g.add_argument("--hf-config", default=None,
                   help="configuration of hf:NAME inputs (datasets.load_dataset's name, e.g. sample-10BT)")
    g.add_argument("--hf-split", default=None,
                   help="split of hf:NAME inputs and DatasetDict folders (default: the only split; "
                        "required when there are several)")
    return g


def reader_options(args) -> dict:
    """{'text_key', 'id_key', 'hf_config', 'hf_split'} from parsed `add_input_args` flags."""
    return {k: getattr(args, k, None) for k in READER_OPTIONS} | {"text_key": getattr(args, "text_key", None)
                                                                   or DEFAULT_TEXT_KEY}
