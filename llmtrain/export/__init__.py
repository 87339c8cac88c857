"""Using a trained checkpoint outside training: export to Hugging Face transformers (hf.py),
sample text (generate.py), measure loss / perplexity / bits per byte on token data (evaluate.py).
runinfo.py finds what a checkpoint needs from its run folder (model, tokenizer, data)."""
