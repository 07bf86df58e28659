"""The GPT task: a decoder-only causal language model trained from scratch on
plain text (Python's own help text by default), evaluated by loss and
perplexity, exported in Hugging Face GPT-2 format, with a greedy continuation
of a prompt printed at the end.

Input and output embeddings are tied (`TIED_WEIGHTS`): with pp >= 2 they live on
the first and last stage, and the engine keeps the two copies one weight.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ...data.views import FirstN
from ...task import Model, Task
from ...train.evaluation import mean_loss
from ...tp.sharding import check_divides
from ...train.losses import VocabParallelCrossEntropy
from .config import DataSection, ModelSection
from .data import SPLITS, LMBlocks, load_tokenizer, prepare_lm
from .model import TIED_WEIGHTS, GPTConfig, gpt_layers


def prepared_dir(cfg) -> Path:
    return Path(cfg.data.prepared_dir or f"runs/prepared/{cfg.job.name}")


def documents(cfg) -> list[str]:
    from ...errors import UsageError
    from .corpus import builtin_corpus, read_text_files

    d = cfg.data
    if d.source == "pydoc":
        return builtin_corpus("pydoc")
    if not d.dir:
        raise UsageError(f"{cfg.source}: [data] dir is empty but source = 'files'; set it to a directory "
                         "of UTF-8 .txt files, e.g. --set data.dir=\"texts/\"")
    return read_text_files(d.dir)


class GptTask(Task):
    name = "gpt"
    sections = {"model": ModelSection, "data": DataSection}

    def prepare(self, cfg) -> dict:
        from .corpus import split_documents

        d = cfg.data
        splits = split_documents(documents(cfg), d.dev_fraction, d.test_fraction, d.split_seed)
        return prepare_lm(splits, prepared_dir(cfg), block_size=cfg.model.block_size,
                          vocab_size=cfg.model.vocab_size, tokenizer_file=d.tokenizer or None)

    def describe(self, prepared: dict) -> str:
        lines = [f"tokenizer: {prepared['tokenizer']} ({prepared['vocab_size']} tokens)"]
        for split, path in prepared["paths"].items():
            with LMBlocks(path) as ds:
                lines.append(f"{split:>5}: {prepared['tokens'][split]:>9} tokens, {len(ds):>7} blocks -> {path}")
        return "\n".join(lines)

    def checkpoint_state(self, prepared: dict) -> dict:
        """A checkpoint must be resumed with the same tokenizer."""
        from .data import file_sha256

        return {"tokenizer_sha256": file_sha256(prepared["tokenizer"]), "vocab_size": prepared["vocab_size"]}

    def datasets(self, cfg, prepared: dict) -> dict:
        return {s: FirstN(LMBlocks(prepared["paths"][s]), cfg.data.limit)
                for s in SPLITS if s in prepared["paths"]}

    def gpt_config(self, cfg, prepared: dict | None) -> GPTConfig:
        m = cfg.model
        vocab = prepared["vocab_size"] if prepared else m.vocab_size
        return GPTConfig(vocab_size=vocab, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
                         n_head=m.n_head, dropout=m.dropout)

    def model(self, cfg, prepared: dict | None) -> Model:
        config = self.config = self.gpt_config(cfg, prepared)
        check_divides(cfg.source, "[model] n_head", config.n_head, cfg.grid.tp)
        sample = None
        if prepared is None:  # `plan` with partition = "profile": random ids of one block
            batch = max(1, cfg.train.global_batch // cfg.grid.dp)
            sample = (torch.randint(0, config.vocab_size, (batch, config.n_positions),
                                    generator=torch.Generator().manual_seed(0)),)
        return Model(gpt_layers(config), VocabParallelCrossEntropy(config.vocab_size), tied=TIED_WEIGHTS, sample=sample,
                     description=f"GPT, {config.n_layer} blocks, hidden {config.n_embd}, {config.n_head} heads, "
                                 f"context {config.n_positions}, vocabulary {config.vocab_size}")

    def evaluate(self, trainer, split: str) -> dict | None:
        loss = mean_loss(trainer, split)
        if loss is None:
            return None
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def after_fit(self, trainer) -> None:
        d = trainer.cfg.data
        if not d.generate:
            return
        tok = load_tokenizer(trainer.prepared["tokenizer"])
        prompt = tok.encode(d.prompt).ids or [trainer.prepared["eos_id"]]
        ids = greedy_continuation(trainer, prompt, d.generate, self.config.n_positions)
        if trainer.topo.rank == 0:
            trainer.log.info(f"greedy continuation of {d.prompt!r}:\n{tok.decode(prompt + ids)}")

    def export(self, trainer, out_dir) -> str | None:
        from .hf_export import export_gpt2

        state = trainer.model.gather_state(root=0)
        if trainer.topo.rank != 0:
            return None
        return str(export_gpt2(out_dir, self.config, state, trainer.prepared["tokenizer"]))


def last_logits(logits: torch.Tensor, topo) -> torch.Tensor:
    """The whole vocabulary's logits of the last position (joined over the tensor
    group when the output layer is split by vocabulary; padding is -inf)."""
    last = logits[0, -1:]
    if topo.grid.tp > 1:
        from ...tp.ops import gather_last_dim

        last = gather_last_dim(last, topo.tp_comm)
    return last[0]


def greedy_continuation(trainer, prompt: list[int], n: int, context: int) -> list[int]:
    """`n` tokens chosen greedily after `prompt`, through the pipeline: the last stage
    picks each token and broadcasts it to its pipeline group. Collective."""
    topo = trainer.topo
    ids = list(prompt)
    for _ in range(n):
        window = torch.tensor([ids[-context:]], dtype=torch.long)
        picked = trainer.model.predict([(window,)], lambda logits, mb: int(last_logits(logits, topo).argmax()))
        token = topo.pp_comm.bcast(picked[0] if topo.is_last_stage else None, root=topo.grid.pp - 1)
        ids.append(token)
    return ids[len(prompt):]
