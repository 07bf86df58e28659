"""Reference for the NER job: plain single-process fine-tuning with Hugging Face
transformers' BertForTokenClassification, on the job's own prepared data.

    python -m mpitrain bench ner-reference jobs/bert_ner_wikiann.toml [--threads 2] [--json FILE]

Same data files, tokenization, tag set, global batch, learning rate, linear decay,
warm-up, gradient clipping, epochs and max_len as the job; one process, `--threads`
torch threads, no MPI. Prints non-padding tokens/s of training and the seqeval
micro F1 on the test split, to compare with `mpirun -n N python -m mpitrain JOB`.
Needs transformers (the `test` extra)."""
from __future__ import annotations

import json
import os
import time

HELP = "NER reference: plain transformers fine-tuning on the job's data (tokens/s, test F1)"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments

    add_job_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import transformers

    from ..data.sharding import epoch_indices
    from ..jobfile import load_job
    from ..tasks.ner.hf_weights import resolve_model_dir
    from ..tasks.ner import task
    from ..tasks.ner.dataset import NerH5Dataset
    from ..tasks.ner.metrics import align_predictions, ner_report
    from ..train.optim import linear_schedule

    torch.set_num_threads(args.threads)
    cfg = load_job(args.job, args.set)
    data = task.prepare(cfg)
    labels = data.labels
    train_ds, test_ds = NerH5Dataset(data.paths["train"]), NerH5Dataset(data.paths["test"])
    torch.manual_seed(cfg.job.seed)
    model = transformers.BertForTokenClassification.from_pretrained(
        resolve_model_dir(cfg.model.pretrained), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    t = cfg.train
    n = min(len(train_ds), cfg.data.limit) if cfg.data.limit else len(train_ds)
    steps = [s for e in range(t.epochs) for s in epoch_indices(n, e, cfg.job.seed, 0, 1, t.global_batch, t.tail)]
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = linear_schedule(opt, len(steps), int(round(t.warmup * len(steps))))
    model.train()
    tokens, start = 0, time.perf_counter()
    for i, idx in enumerate(steps):
        ids, mask, lab = train_ds.batch(idx)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        tokens += int(mask.sum())
        if (i + 1) % t.log_every == 0:
            print(f"step {i + 1}/{len(steps)} loss {loss.item():.4f} "
                  f"{tokens / (time.perf_counter() - start):,.0f} tokens/s", flush=True)
    train_s = time.perf_counter() - start
    model.eval()
    truth, preds = [], []
    n_test = min(len(test_ds), cfg.data.limit) if cfg.data.limit else len(test_ds)
    with torch.no_grad():
        for s in range(0, n_test, t.eval_batch):
            ids, mask, lab = test_ds.batch(np.arange(s, min(n_test, s + t.eval_batch)))
            tt, pp = align_predictions(model(input_ids=ids, attention_mask=mask).logits.argmax(-1), lab, labels)
            truth += tt
            preds += pp
    report = ner_report(truth, preds)
    result = {"impl": "transformers", "threads": args.threads, "steps": len(steps), "train_s": train_s,
              "tokens_per_s": tokens / train_s, "test_f1": report["f1"],
              "test_precision": report["precision"], "test_recall": report["recall"]}
    print(report["report"])
    print(f"reference: {len(steps)} steps in {train_s:.1f} s, {result['tokens_per_s']:,.0f} tokens/s, "
          f"test F1 {report['f1']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
