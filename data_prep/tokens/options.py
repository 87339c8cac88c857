"""What a tokenising run is asked to do: the options that change its output (recorded in the
manifest; a finished task is reused only when they are the same) and the number of encoding
processes (which changes nothing written)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmtrain.tokenizer import EOD_TOKEN
from llmtrain_prep.readers import Adapter, Field, InputError

DEFAULT_VALID_FRACTION = 0.01
DEFAULT_MAX_SHARD_TOKENS = 1_000_000_000  # 2 GB per .bin at uint16
SPLITS = ("train", "valid")
PROMPT_RESPONSE = "prompt-response"
FORMATS = ("text", PROMPT_RESPONSE)
READER_DEFAULTS = {"text_key": "text", "id_key": None, "hf_config": None, "hf_split": None}


@dataclass
class Options:
    valid_fraction: float = DEFAULT_VALID_FRACTION
    seed: int = 0
    max_shard_tokens: int = DEFAULT_MAX_SHARD_TOKENS
    eod_token: str = EOD_TOKEN
    reader: dict = field(default_factory=dict)  # readers.reader_options: text_key, id_key, hf_config, hf_split
    workers: int | None = None
    format: str = "text"  # text | prompt-response (a loss mask beside the tokens)
    prompt_key: str = "prompt"
    response_key: str = "response"

    def __post_init__(self) -> None:
        self.reader = {**READER_DEFAULTS, **{k: v for k, v in self.reader.items() if v is not None}}

    @property
    def masked(self) -> bool:
        """Prompt/response records: a loss mask is written beside the tokens."""
        return self.format == PROMPT_RESPONSE

    def adapter(self) -> Adapter:
        """How a record becomes a document: its text (the prompt for prompt/response records,
        whose response goes in ``meta["response"]``) and id."""
        if self.masked:
            return Adapter(Field(self.prompt_key, "--prompt-key"), self.reader["id_key"],
                           {"response": Field(self.response_key, "--response-key")})
        return Adapter(Field(self.reader["text_key"]), self.reader["id_key"])

    def check(self) -> None:
        if not 0 <= self.valid_fraction < 1:
            raise InputError(f"--valid-fraction {self.valid_fraction} must be in [0, 1)")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers} must be >= 1")
        if self.max_shard_tokens < 1 or self.max_shard_tokens != int(self.max_shard_tokens):
            raise InputError(f"--max-shard-tokens {self.max_shard_tokens} must be a whole number >= 1")
        if not self.eod_token:
            raise InputError("--eod-token is empty; name the tokenizer's end-of-document token, e.g. '<|endoftext|>'")
        if self.format not in FORMATS:
            raise InputError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")

    def record(self, workers: int) -> dict:
        return {"valid_fraction": self.valid_fraction, "seed": self.seed, "workers": workers,
                "max_shard_tokens": int(self.max_shard_tokens),
                "split": "blake2b(id + NUL + text, key=seed) < valid_fraction",
                **{k: v for k, v in self.reader.items() if v is not None},
                **({"format": self.format, "prompt_key": self.prompt_key, "response_key": self.response_key}
                   if self.masked else {})}
