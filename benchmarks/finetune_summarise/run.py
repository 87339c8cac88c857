"""The founding scenario end to end: pretrain the tiny model on the bundled corpus, fine-tune it
to title documentation sections (section text → title, a summarisation-like task built from the
bundled corpus by data_prep/make_finetune_task.py), and score ROUGE-L of the pretrained and the
fine-tuned model on held-out sections (greedy decoding through llmtrain.eval.generate's
KV-cache path).

    python benchmarks/finetune_summarise/run.py [--work runs/finetune_summarise] \
        [--pretrain-steps 300] [--finetune-steps 150] [--out benchmarks/finetune_summarise/results.json]

Every stage is the project's own command line (launcher/pretrain.py through deepspeed,
llmtrain.checkpoint.consolidate, data_prep/make_finetune_task.py, data_prep/tokenize_corpus.py
--format prompt-response, launcher/pretrain.py --config configs/finetune_tiny.yaml); the
commands and their wall times go into the results JSON. Needs the rouge-score package
(pip install -e .[finetune]).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VALID_FRACTION = 0.1  # the pretraining run's valid split: its documents are the held-out test sections


def run(cmd: list, log: dict, name: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "PYTHONUNBUFFERED": "1"}
    t = time.time()
    print(f"[{name}] {' '.join(map(str, cmd))}", flush=True)
    r = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    log[name] = {"command": " ".join(map(str, cmd)), "wall_s": round(time.time() - t, 1)}
    print(f"[{name}] {log[name]['wall_s']} s", flush=True)


def deepspeed(*args) -> list:
    from llmtrain.core.tasks import free_port

    return ["deepspeed", "--num_gpus", "1", "--master_port", str(free_port()), REPO / "launcher" / "pretrain.py", *args]


def score(model_path, records: list[dict], max_new_tokens: int = 24) -> dict:
    """Greedy titles for each record's prompt and their ROUGE-L (F1, precision, recall) against
    the reference title."""
    import torch
    from rouge_score import rouge_scorer

    from llmtrain.eval.generate import sample
    from llmtrain.checkpoint.load import eod_token_id, load_model, load_tokenizer, run_info, tokenizer_path

    info = run_info(model_path)
    tok = load_tokenizer(tokenizer_path(info, None))
    eod = eod_token_id(info, tok)
    model, _ = load_model(model_path)
    model.eval()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out, f, p, r = [], [], [], []
    with torch.no_grad():
        for rec in records:
            context = [eod] + tok.encode(rec["prompt"], add_special_tokens=False).ids
            context = context[-(model.cfg.seq_len - max_new_tokens):]
            ids = sample(model, context, max_new_tokens, temperature=0.0, stop_id=eod,
                         vocab_limit=tok.get_vocab_size(), kv_cache=True)[0]
            lines = [ln.strip() for ln in tok.decode(ids, skip_special_tokens=False).split("\n") if ln.strip()]
            text = lines[0] if lines else ""  # the first non-empty line
            s = scorer.score(rec["response"].strip(), text)["rougeL"]
            f.append(s.fmeasure), p.append(s.precision), r.append(s.recall)
            out.append({"id": rec["id"], "reference": rec["response"].strip(), "generated": text,
                        "rougeL_f1": round(s.fmeasure, 4)})
    n = len(records)
    return {"rougeL_f1": sum(f) / n, "rougeL_precision": sum(p) / n, "rougeL_recall": sum(r) / n,
            "exact_match": sum(o["generated"] == o["reference"] for o in out) / n, "examples": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "finetune_summarise"), help="run folders and data")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--score-only", action="store_true",
                    help="only score the models of an earlier run with the same --work and steps")
    ap.add_argument("--reuse-pretrain", action="store_true",
                    help="keep WORK/pretrain when it has a checkpoint (only the fine-tuning and scoring run again)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for the fine-tuning run (repeatable), e.g. data.document_mask=false")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "finetune_summarise" / "results.json"))
    args = ap.parse_args(argv)
    from llmtrain_prep.sample import sample_prefix

    work = Path(args.work)
    log: dict = {}
    t0 = time.time()
    pre = work / "pretrain"
    if args.score_only:
        return finish(args, work, pre, log, t0)
    if args.reuse_pretrain and list(pre.glob("checkpoints/global_step*")):
        log["pretrain"] = {"reused": str(pre)}
    else:
        run(deepspeed("--run-dir", pre, f"data.valid_fraction={VALID_FRACTION}",
                      f"train.max_steps={args.pretrain_steps}", "checkpoint.resume=false"), log, "pretrain")
    step = max(pre.glob("checkpoints/global_step*"), key=lambda p: int(p.name[len("global_step"):]))
    model = work / "pretrained.safetensors"
    run([sys.executable, str(REPO / "launcher" / "consolidate.py"), step, "--out", model], log, "consolidate")
    task = work / "task"
    run([sys.executable, REPO / "data_prep" / "make_finetune_task.py", "--output-dir", task,
         "--valid-fraction", VALID_FRACTION], log, "make_task")
    tok = sample_prefix(4096, VALID_FRACTION).parent / "tokenizer.json"  # the pretraining run's tokenizer
    run([sys.executable, REPO / "data_prep" / "tokenize_corpus.py", "--format", "prompt-response",
         "--input", task / "train.jsonl", "--tokenizer", tok, "--output-prefix", task / "titles",
         "--valid-fraction", "0.05"], log, "tokenize")
    ft = finetune_dir(args, work)
    run(deepspeed("--config", REPO / "configs" / "finetune_tiny.yaml", "--run-dir", ft,
                  f"data.prefix={task / 'titles'}", f"checkpoint.init_from={model}",
                  f"train.max_steps={args.finetune_steps}", f"train.lr={args.finetune_lr}", "checkpoint.resume=false",
                  *args.overrides),
        log, "finetune")
    return finish(args, work, pre, log, t0)


def finetune_dir(args, work: Path) -> Path:
    extra = "".join("_" + o.replace("=", "-") for o in args.overrides)
    return work / f"finetune_{args.finetune_steps}_lr{args.finetune_lr:g}{extra}"


def finish(args, work: Path, pre: Path, log: dict, t0: float) -> int:
    task = work / "task"
    ft = finetune_dir(args, work)
    if args.score_only:
        log = json.loads(Path(args.out).read_text())["stages"] if Path(args.out).is_file() else {}
    test = [json.loads(ln) for ln in (task / "test.jsonl").read_text().splitlines() if ln.strip()]
    t = time.time()
    before = score(pre, test)
    after = score(ft, test)
    log["score"] = {"wall_s": round(time.time() - t, 1)}
    metrics = [json.loads(ln) for ln in (ft / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [m for m in metrics if m.get("split") is None and m.get("loss") is not None]
    valid = [m for m in metrics if m.get("split") == "valid"]
    result = {
        "task": "Python 3.11 documentation section text -> its title (data_prep/make_finetune_task.py)",
        "test_examples": len(test),
        "train_examples": sum(1 for ln in (task / "train.jsonl").read_text().splitlines() if ln.strip()),
        "metric": "ROUGE-L (rouge-score, use_stemmer=True), mean over test examples; greedy, KV cache, "
                  "first non-empty line of up to 24 new tokens",
        "pretrained": {k: v for k, v in before.items() if k != "examples"},
        "finetuned": {k: v for k, v in after.items() if k != "examples"},
        "finetune_train_loss": [(m["step"], round(m["loss"], 4), m.get("loss_tokens")) for m in train],
        "finetune_valid_loss": [(m["step"], round(m["loss"], 4)) for m in valid],
        "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps, "finetune_lr": args.finetune_lr,
        "finetune_overrides": args.overrides,
        "pretrain_final_loss": [m["loss"] for m in map(json.loads, (pre / "metrics.jsonl").read_text().splitlines())
                                if m.get("split") is None and m.get("loss") is not None][-1],
        "examples": [{"id": a["id"], "reference": a["reference"], "pretrained": b["generated"],
                      "finetuned": a["generated"]} for a, b in zip(after["examples"][:15], before["examples"][:15])],
        "stages": log, "total_wall_s": round(time.time() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.platform()}",
    }
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"ROUGE-L F1: pretrained {before['rougeL_f1']:.4f}, fine-tuned {after['rougeL_f1']:.4f} "
          f"({len(test)} held-out sections) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
