"""LightningModule that trains a :class:`~dr.models.BiEncoder` with a contrastive loss."""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from functools import partial
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from dr import allocator
from dr.models.encoder import BiEncoder
from dr.evaluation.evaluate import evaluate_run
from dr.losses.base import Loss
from dr.losses.scores import student_scores
from dr.retrieval.index import DenseIndex
from dr.training.gather import gather_batch, gather_rows, gather_texts, world_size
from dr.training.adapter_state import save_only_trainable
from dr.training.grad_cache import embed_in_chunks, memory_estimate

log = logging.getLogger(__name__)


def rank_validation(passage_emb, passage_ids, query_emb, query_ids, qrels, measures) -> dict[str, float]:
    """The validation measures of the held-out queries ranked among the validation candidates (their
    judged documents and the BM25 top ``data.val_depth``), top 100: what ``val/<measure>`` logs."""
    index = DenseIndex.build(np.asarray(passage_emb, np.float32), list(passage_ids), use_gpu=False)
    run = index.search_run(list(query_ids), np.asarray(query_emb, np.float32), k=100)
    return evaluate_run(run, qrels, measures)


class DenseRetrievalModule(pl.LightningModule):
    """Dual-encoder training.

    Args:
        encoder: the :class:`BiEncoder` to train.
        loss: a :class:`dr.losses.base.Loss`, called as ``loss(q, d, **fields)``, where ``q`` is
            ``[B, H]``, ``d`` is ``[P, H]`` (the batch's passages, see
            :meth:`dr.training.RetrievalDataModule.collate_train`) and ``fields`` are the batch
            fields the loss declares (:meth:`~dr.losses.base.Loss.input_fields`). It returns a
            scalar, or a dict with ``"loss"`` and named components (each logged as ``train/<name>``).
        inbatch_teacher: optional frozen scorer called as ``teacher(queries, passages)`` on the
            batch's texts; it returns the ``[B, P]`` teacher score matrix, passed to the loss as
            ``teacher_matrix`` (TAS-B's in-batch teacher).
        optimizer: a partial optimizer (Hydra ``_partial_: true``) completed with the parameters.
        scheduler: a partial LR-scheduler factory completed with the optimizer and, when it takes
            one, ``num_training_steps`` (the trainer's estimated stepping batches); stepped every step.
        val_measures: ir-measures strings computed on the validation split.
        step_seed: when set, the torch RNG (dropout) is reseeded from (step_seed, global step) before
            every step, so a resumed run repeats an uninterrupted one exactly.
        train_query_max_length / train_passage_max_length: truncation during training only, when
            shorter than the encoder's (which still applies to validation, evaluation and export).
            Training on shorter passages roughly halves the cost of a step on a CPU.
        gradient_checkpointing: keep only each transformer layer's input during the forward pass
            and recompute the rest in the backward pass (Chen et al. 2016, "Training Deep Nets with
            Sublinear Memory Cost"): activation memory falls from every layer's intermediates to one
            layer's, for about one extra forward pass of compute. Dropout masks are replayed
            (the RNG state is saved), so the gradients are those of the plain pass.
        ffn_recompute: ``"none"``, ``"activation"`` or ``"full"``: recompute the feed-forward
            block's activation (almost free), or its up-projection and activation (one extra
            matrix product per layer), in the backward pass instead of storing them (selective
            recomputation, Korthikanti et al. 2022; :mod:`dr.models.recompute`). Same gradients;
            ``"full"`` stores about 40% less for the backward pass on all-MiniLM-L6-v2. The class
            default is ``"none"``; ``conf/train.yaml`` sets ``"full"``.
        attention_recompute: recompute each self-attention module (query/key/value projections and
            the attention kernel) in the backward pass instead of storing its projections and
            output (:func:`dr.models.recompute.set_attention_recompute`). Same gradients; ignored
            with ``gradient_checkpointing``, which already recomputes whole layers.
        cpu_linear: ``"onednn"`` or ``"aten"``: the kernel of the fp32 linear layers on CPU
            (:mod:`dr.models.cpu_linear`); ``None`` keeps the encoder's (``DR_CPU_LINEAR``, default
            ``onednn``).
        length_buckets: split each training batch's queries and passages into this many
            length-sorted slices, each padded to its own longest text (exact: padding is masked;
            it only saves the padded compute). 1 pads the whole batch to its longest text.
        attention_dropout: when set, the dropout on attention probabilities during training
            (``None`` keeps the model's own, 0.1 for BERT-style models). 0 lets the fused attention
            kernel run in training: about 4 GB less activation memory at batch 32 + 64 passages of
            256 tokens (:meth:`BiEncoder.set_attention_dropout`). It changes the regularisation.
        gather_negatives: under DDP, gather every rank's query and passage embeddings (gradient
            kept) so each query scores every rank's passages (:mod:`dr.training.gather`); the loss
            is that of one process on the concatenated batch. No effect on one device.
        grad_cache_chunk: encode queries and passages this many at a time and back-propagate
            chunk by chunk (GradCache, Gao et al. 2021; :mod:`dr.training.grad_cache`): the same
            gradients for one chunk's activation memory. None encodes the whole batch at once.
    """

    def __init__(
        self,
        encoder: BiEncoder,
        loss: Loss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        val_measures: tuple[str, ...] = ("nDCG@10", "R@100"),
        step_seed: int | None = None,
        train_query_max_length: int | None = None,
        train_passage_max_length: int | None = None,
        inbatch_teacher: nn.Module | None = None,
        gradient_checkpointing: bool = False,
        ffn_recompute: str = "none",
        attention_recompute: bool = False,
        cpu_linear: str | None = None,
        length_buckets: int = 1,
        attention_dropout: float | None = None,
        gather_negatives: bool = False,
        grad_cache_chunk: int | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.inbatch_teacher = inbatch_teacher
        if inbatch_teacher is not None:
            inbatch_teacher.requires_grad_(False)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_measures = list(val_measures)
        self.step_seed = step_seed
        self.train_query_max_length = train_query_max_length
        self.train_passage_max_length = train_passage_max_length
        self._val_outputs: dict[str, list] = defaultdict(list)
        if gradient_checkpointing:
            encoder.gradient_checkpointing_enable()
        if encoder.lora is not None:  # LoRA: the adapters alone are trained, optimised and checkpointed
            save_only_trainable(self)
            trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
            log.info(
                "encoder.lora=%s: %d trainable parameters of %d (%.2f%%)",
                encoder.lora,
                trainable,
                sum(p.numel() for p in encoder.parameters()),
                100 * trainable / max(1, sum(p.numel() for p in encoder.parameters())),
            )
        if ffn_recompute != "none" and not encoder.set_feed_forward_recompute(ffn_recompute):
            log.warning(
                "module.ffn_recompute=%s: no supported feed-forward block in this encoder%s; left as it is",
                ffn_recompute,
                " (LoRA adapters on its dense layers, encoder.lora.target_modules)" if encoder.lora else "",
            )
        if attention_recompute and not gradient_checkpointing and not encoder.set_attention_recompute(True):
            log.warning(
                "module.attention_recompute=true: no supported self-attention module in this encoder; left as it is"
            )
        if cpu_linear is not None:
            encoder.set_cpu_linear(cpu_linear)
        self.length_buckets = max(1, int(length_buckets))
        if attention_dropout is not None:
            if not encoder.set_attention_dropout(
                attention_dropout
            ):  # e.g. an architecture whose attention keeps a float
                log.warning(
                    "module.attention_dropout=%s: no attention module with an nn.Dropout in this encoder; left as it "
                    "is",
                    attention_dropout,
                )
        self.gather_negatives = bool(gather_negatives)
        if grad_cache_chunk is not None and int(grad_cache_chunk) < 1:
            raise ValueError(f"grad_cache_chunk must be a positive integer or None, got {grad_cache_chunk}")
        self.grad_cache_chunk = None if grad_cache_chunk is None else int(grad_cache_chunk)
        self.memory_estimate: dict[str, float] | None = None

    # ------------------------------------------------------------------ training
    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Tokenise on the CPU before the batch moves to the device."""
        if "queries" in batch:
            batch["query_inputs"] = dict(self.encoder.tokenize(batch["queries"], "query", self.train_query_max_length))
            batch["passage_inputs"] = dict(
                self.encoder.tokenize(batch["passages"], "passage", self.train_passage_max_length)
            )
        return batch

    def on_train_start(self) -> None:
        if self.loss.scale_fit_queries() is not None:
            self._fit_student_scale(self.loss.scale_fit_queries())
        # from_pretrained returns models in eval mode and Lightning keeps modules' modes:
        # switch to train mode so dropout is active, as in the models' pre-training.
        self.encoder.train()
        if self.gather_negatives and world_size() == 1:
            log.warning(
                "module.gather_negatives=true on a single process: there are no other devices' negatives to gather "
                "(use trainer=ddp with several devices)"
            )

    @torch.no_grad()
    def _fit_student_scale(self, queries: int) -> None:
        """A loss that fits its student scale (``loss.student_scale: auto``): the untrained
        student's and the teacher's margins on the training pairs of up to ``queries`` queries
        (epoch 0's draws, evenly spread) go to :meth:`~dr.losses.base.Loss.fit_scale`; logged."""
        from dr.losses.margin_mse import gather_pair_scores

        dm = self.trainer.datamodule
        n = len(dm.train_dataset)
        picks = np.unique(np.linspace(0, n - 1, min(n, int(queries))).round().astype(int))
        s_margins, t_margins = [], []
        self.encoder.eval()
        for start in range(0, len(picks), dm.hparams.batch_size):
            batch = dm.collate_train(
                [dm.train_dataset[(int(i), 0)] for i in picks[start : start + dm.hparams.batch_size]]
            )
            if "teacher_pos" not in batch or not batch["neg_index"].numel():
                continue
            batch = self.on_before_batch_transfer(batch, 0)
            q = self.encoder.embed_queries({k: v.to(self.device) for k, v in batch["query_inputs"].items()})
            d = self.encoder.embed_passages({k: v.to(self.device) for k, v in batch["passage_inputs"].items()})
            s_pos, s_neg, present = gather_pair_scores(
                student_scores(q, d), batch["target"].to(self.device), batch["neg_index"]
            )
            s_margins.append(torch.where(present, s_pos[:, None] - s_neg, torch.nan).cpu())
            t_margins.append(batch["teacher_pos"][:, None] - batch["teacher_neg"])
        if not s_margins:
            raise ValueError("loss.student_scale=auto: no training pair with teacher scores to fit the scale on")
        s_all, t_all = torch.cat([m.flatten() for m in s_margins]), torch.cat([m.flatten() for m in t_margins])
        scale = self.loss.fit_scale(s_all, t_all)
        pairs = int((torch.isfinite(s_all) & torch.isfinite(t_all)).sum())
        log.info(
            "loss.student_scale=auto: %.4g (least squares of teacher margins on the student's, %d pairs of %d queries)",
            scale,
            pairs,
            len(picks),
        )
        self.log("train/student_scale_fit", scale, rank_zero_only=True)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.step_seed is not None:
            torch.manual_seed(self.step_seed * 1_000_003 + self.global_step)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.batch_loss(batch)
        batch_size = len(batch["queries"])
        for name, value in parts.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        # queries that score each other in one loss: the batch of every rank when gathering
        gathered = self.gather_negatives and world_size() > 1
        self.log(
            "train/effective_batch_size", float(batch_size * (world_size() if gathered else 1)), batch_size=batch_size
        )
        if self.memory_estimate is not None:
            for name, value in self.memory_estimate.items():
                self.log(f"train/grad_cache_activation_mib_{name}", value, batch_size=batch_size)
        if "negatives_version" in batch:
            self.log("train/negatives_version", float(batch["negatives_version"]), batch_size=batch_size)
        return parts["loss"]

    def batch_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Embed the batch (in GradCache chunks when configured), gather it across ranks when
        configured, score it with the in-batch teacher if any, and return the loss's parts."""
        embed_q = partial(self.encoder.embed_queries, buckets=self.length_buckets)
        embed_d = partial(self.encoder.embed_passages, buckets=self.length_buckets)
        if self.grad_cache_chunk is None:
            q, d = embed_q(batch["query_inputs"]), embed_d(batch["passage_inputs"])
        else:
            if self.memory_estimate is None and torch.is_grad_enabled():
                self.memory_estimate = memory_estimate(
                    embed_q,
                    embed_d,
                    batch["query_inputs"],
                    batch["passage_inputs"],
                    self.grad_cache_chunk,
                    list(self.encoder.parameters()),
                )
                log.info(
                    "grad cache: chunks of %d texts; estimated activation memory %.0f MiB for the whole batch, "
                    "%.0f MiB per chunk (%.0f MiB saved)",
                    self.grad_cache_chunk,
                    *self.memory_estimate.values(),
                )
            q = embed_in_chunks(embed_q, batch["query_inputs"], self.grad_cache_chunk)
            d = embed_in_chunks(embed_d, batch["passage_inputs"], self.grad_cache_chunk)
        fields = self.loss.input_fields()
        inputs = {k: batch[k] for k in fields if k in batch}
        passages = batch["passages"]
        gathered = self.gather_negatives and world_size() > 1
        if gathered:
            q, d, inputs = gather_batch(q, d, inputs, batch.get("positive_rows"), batch.get("passage_rows"))
            if self.inbatch_teacher is not None:
                passages = gather_texts(passages)
        if self.inbatch_teacher is not None and "teacher_matrix" in fields:
            self.inbatch_teacher.eval()
            with torch.no_grad():
                # this rank's queries against every passage; the rows of all ranks are then gathered
                matrix = self.inbatch_teacher(batch["queries"], passages).to(q.device)
            inputs["teacher_matrix"] = gather_rows(matrix.float(), float("nan"))[0] if gathered else matrix
        out = self.loss(q, d, **inputs)
        return out if isinstance(out, dict) else {"loss": out}

    def configure_optimizers(self):
        params = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("loss.")]
        loss_groups = self.loss.param_groups()  # a learnable student scale, with its own learning rate
        if loss_groups:
            params = [{"params": params}, *loss_groups]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "num_training_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["num_training_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        kinds = np.array(batch["kinds"])
        for kind in ("passage", "query"):
            sel = np.flatnonzero(kinds == kind)
            if not len(sel):
                continue
            texts = [batch["texts"][i] for i in sel]
            inputs = {k: v.to(self.device) for k, v in self.encoder.tokenize(texts, kind).items()}
            embed = self.encoder.embed_queries if kind == "query" else self.encoder.embed_passages
            self._val_outputs[kind + "_ids"].extend(batch["ids"][i] for i in sel)
            self._val_outputs[kind + "_emb"].append(embed(inputs).float().cpu().numpy())

    def on_validation_start(self) -> None:
        # With jemalloc's purging off (dr.allocator), the pages a training step freed are kept for
        # the next step and do not fit validation's inference-sized tensors: give them back before
        # validation, and validation's after, so the two do not add up (about 0.2 GiB at 256
        # tokens). The next step faults its pages in again, once per validation.
        allocator.release_free_memory()

    def on_validation_end(self) -> None:
        allocator.release_free_memory()

    def on_validation_epoch_end(self) -> None:
        out, self._val_outputs = self._val_outputs, defaultdict(list)
        if not out.get("query_emb") or not out.get("passage_emb"):
            return
        metrics = rank_validation(
            np.concatenate(out["passage_emb"]),
            out["passage_ids"],
            np.concatenate(out["query_emb"]),
            out["query_ids"],
            self.trainer.datamodule.val_qrels,
            self.val_measures,
        )
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == self.val_measures[0], sync_dist=False)
