"""Lightning data module for contrastive training of a dual encoder.

Each training example is one query with one positive and ``num_negatives`` hard negatives, drawn
afresh every time the query is loaded from a seeded generator keyed by (seed, epoch, query,
occurrence), so a run is reproducible whatever the number of workers, a resumed epoch draws what it
drew before, and a query that a batch sampler (TAS) draws twice in an epoch gets a fresh pair.
Hard negatives come from a negatives file (see :mod:`dr.data.negatives`) or from a negatives
source handed in by the config, such as :class:`dr.retrieval.bm25.BM25Negatives` (computed at
set-up and saved as a negatives file in the run directory). Batches are composed by the samplers
of :mod:`dr.sampling`.

Validation ranks a small candidate corpus for held-out queries (their judged documents plus the
BM25 top ``val_depth``), so it is cheap enough to run during training. Its figures are for
monitoring and checkpoint selection; full-corpus evaluation is done by ``dr-eval``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from dr.config import ConfigError
from dr.data import (
    TeacherScores,
    check_ids,
    drop_teacher_inversions,
    passage_texts,
    read_corpus,
    read_negatives,
    read_positives,
    read_qrels,
    read_queries,
    write_negatives,
)
from dr.data.hf import hf_paths
from dr.data.io import DataError
from dr.retrieval.bm25 import BM25
from dr.sampling.random import QueryBatchSampler
from dr.training.batch import contrastive_batch
from dr.training.compact_data import WithTeacherNegatives, negatives_compact, read_teacher_compact, record_scores
from dr.training.files import negatives_from_file, read_teacher_files
from dr.training.dataset import ContrastiveDataset, ResumableDataLoader

log = logging.getLogger(__name__)


class RetrievalDataModule(pl.LightningDataModule):
    """Training and validation data for a dual encoder.

    Args:
        corpus, train_queries, train_qrels: file paths, ``irds:<id>`` or bundled names such as
            ``scifact:corpus`` (see :func:`dr.data.resolve_path`); or ``hf`` (``data.hf``: texts, :mod:`dr.data.hf`),
            whose files replace them, and ``negatives`` when it has some.
        val_queries, val_qrels: a dev split; if absent, ``val_fraction`` of the training queries
            is held out instead (0 disables validation), drawn with ``val_seed`` (default: ``seed``).
        negatives: a negatives source, called as ``source(corpus, qids, query_texts, positives)
            -> [NegativesRecord]`` (e.g. :class:`dr.retrieval.bm25.BM25Negatives`, whose BM25
            index then also serves validation), the path of a negatives file, or None (the negatives of the
            teacher-score triples when ``teacher_scores`` is set, else in-batch negatives only).
        num_negatives: hard negatives per query per step (distinct; fewer for a query with fewer candidates).
        teacher_scores: path(s) of teacher-score files (:mod:`dr.data.teacher_scores`, the published
            Margin-MSE TSV format). Their positives count as positives and their negatives join
            each query's candidates; batches carry ``teacher_pos`` / ``teacher_neg`` (NaN where
            a pair is unscored).
        teacher_from_negatives: the scores in the negatives file are teacher scores (as written
            by ``dr-score`` on a negatives file), merged with ``teacher_scores``.
        batch_sampler: a factory (Hydra ``_partial_``) called as ``factory(qids=, batch_size=,
            seed=, rank=, world_size=)`` returning a :class:`QueryBatchSampler` (default: random
            batches; TAS in :mod:`dr.sampling`).
        pair_sampler: chooses each query's positive and negatives (see :class:`ContrastiveDataset`);
            one with ``uses_scores`` (SimANS, :mod:`dr.sampling.simans`) gets the negatives file's
            scores, and one with ``score_scale=None`` the datamodule's ``score_scale``.
        min_teacher_pairs: with a teacher-score file, train only on queries with at least this many
            (positive, negative) teacher pairs (0: all; TAS-Balanced's reference uses 2).
        min_relevance: qrels grade that counts as a positive.
        teacher_pair_filter: drop the teacher pairs and candidates that the teacher scores at or above
            a positive (:func:`dr.data.drop_teacher_inversions`), at set-up and after each refresh.
        on_missing: ids that the qrels, negatives or teacher files name but the corpus or queries lack:
            ``"warn"`` logs their count and drops them, ``"error"`` raises (:func:`dr.data.check_ids`).
        compact: read negatives and teacher files into arrays, for MS MARCO sizes (:mod:`dr.training.compact_data`).
        score_scale: the student's logits per unit of similarity, for a pair sampler whose kernel is
            on logits and has no scale of its own (SimANS); resolved once by :func:`dr.training.train`
            (:func:`dr.miners.candidates.student_score_scale`) and handed down.
    """

    def __init__(
        self,
        corpus: str,
        train_queries: str,
        train_qrels: str,
        val_queries: str | None = None,
        val_qrels: str | None = None,
        val_fraction: float = 0.0,
        val_depth: int = 30,
        val_seed: int | None = None,
        negatives=None,
        num_negatives: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
        min_relevance: int = 1,
        seed: int = 42,
        output_dir: str | None = None,
        teacher_scores: str | list[str] | None = None,
        teacher_from_negatives: bool = False,
        batch_sampler=None,
        pair_sampler=None,
        min_teacher_pairs: int = 0,
        teacher_pair_filter: bool = False,
        on_missing: str = "warn",
        compact: bool = False,
        score_scale: float | None = None,
        hf: dict | None = None,
    ):
        super().__init__()
        corpus, train_queries, train_qrels, negatives = hf_paths(hf, corpus, train_queries, train_qrels, negatives)
        # Samplers are code, not hyperparameters: resuming loads the checkpoint with weights_only=True.
        self.save_hyperparameters(
            logger=False, ignore=["batch_sampler", "pair_sampler", "negatives", "score_scale", "hf"]
        )
        self.score_scale = score_scale
        self.negatives = negatives  # a path (str), a source object or None
        self.batch_sampler_factory = batch_sampler
        self.pair_sampler = pair_sampler
        self.corpus = None
        self._prepared = False

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        hp = self.hparams
        self.corpus = read_corpus(hp.corpus)
        self.row_of = {docid: i for i, docid in enumerate(self.corpus["docid"])}
        self._queries = queries = read_queries(hp.train_queries)
        qrels = self._known_qrels(read_qrels(hp.train_qrels), hp.train_qrels, queries, hp.train_queries)
        positives = read_positives(qrels, hp.min_relevance)
        self.teacher = self._read_teacher(positives)
        qids = [q for q in queries if positives.get(q)]
        if hp.teacher_scores and hp.min_teacher_pairs > 0:
            # TAS-Balanced's reference keeps only queries with enough teacher pairs to balance.
            kept = [q for q in qids if len(self.teacher.pairs.get(q, ())) >= hp.min_teacher_pairs]
            if len(kept) < len(qids):
                log.info(
                    "%d of %d training queries have fewer than %d teacher pairs and are left out",
                    len(qids) - len(kept),
                    len(qids),
                    hp.min_teacher_pairs,
                )
            qids = kept
        if not qids:
            pairs = hp.teacher_scores and hp.min_teacher_pairs
            also = f" and at least {hp.min_teacher_pairs} pairs in {hp.teacher_scores}" if pairs else ""
            raise DataError(hp.train_qrels, None, f"no training query has a judged positive in the corpus{also}")

        val_qids: list[str] = []
        self.val_queries: dict[str, str] = {}
        self.val_qrels: dict[str, dict[str, int]] = {}
        if hp.val_queries and hp.val_qrels:
            self.val_queries = read_queries(hp.val_queries)
            self.val_qrels = self._known_qrels(read_qrels(hp.val_qrels), hp.val_qrels, self.val_queries, hp.val_queries)
        elif hp.val_fraction > 0:
            rng = np.random.default_rng(hp.seed if hp.val_seed is None else hp.val_seed)
            n_val = max(1, int(round(hp.val_fraction * len(qids))))
            val_qids = sorted(rng.choice(qids, size=n_val, replace=False).tolist())
            held_out = set(val_qids)
            self.val_queries = {q: queries[q] for q in val_qids}
            self.val_qrels = {q: qrels[q] for q in val_qids}
            qids = [q for q in qids if q not in held_out]

        if getattr(self.pair_sampler, "uses_scores", False) and hp.teacher_from_negatives:
            raise ConfigError(
                f"data.pair_sampler={type(self.pair_sampler).__name__} samples by the retriever's scores in the "
                f"negatives "
                "file, but data.teacher_from_negatives=true says they are teacher scores: use "
                "data.teacher_scores=FILE instead"
            )
        scores: dict[str, dict[str, float]] = {}
        if callable(self.negatives):
            records = self.negatives(self.corpus, qids, [queries[q] for q in qids], positives)
            if hp.output_dir:
                name = getattr(self.negatives, "name", "source")
                write_negatives(Path(hp.output_dir) / f"negatives.{name}.jsonl", records)
            negatives = {r.qid: list(r.negatives) for r in records}
            scores = {r.qid: record_scores(r) for r in records}
        elif self.negatives:
            negatives, scores = self._negatives_from_file(str(self.negatives), positives)
        else:
            negatives = {}
        negatives = self._add_teacher_negatives(negatives, positives)
        missing = [q for q in qids if not negatives.get(q)]
        if missing and hp.num_negatives > 0:
            log.warning(
                "%d of %d training queries have no hard negative; they train on in-batch negatives only",
                len(missing),
                len(qids),
            )

        self.train_dataset = ContrastiveDataset(
            qids,
            [queries[q] for q in qids],
            positives,
            negatives,
            self.passage_text,
            hp.num_negatives,
            hp.seed,
            teacher=self.teacher,
            pair_sampler=self.pair_sampler,
        )
        self.train_dataset.scores = scores
        if self.val_queries:
            bm25 = getattr(self.negatives, "index", None)  # a BM25 source's index, if any
            self._setup_validation(
                bm25 if isinstance(bm25, BM25) else BM25(passage_texts(self.corpus), list(self.corpus["docid"]))
            )
        self._prepared = True

    def _unknown(self, ids, source: str, what: str, known=None, where: str | None = None) -> set[str]:
        """The ``ids`` that ``source`` names but ``known`` (default: the training queries for qids, else the corpus)
        lacks; logged and returned to drop, or a DataError (``data.on_missing``, :func:`dr.data.check_ids`)."""
        if known is None:
            known, where = (
                (self._queries, self.hparams.train_queries) if what == "qids" else (self.row_of, self.hparams.corpus)
            )
        return check_ids(ids, known, source=source, what=what, where=where, on_missing=self.hparams.on_missing)

    def _known_qrels(self, qrels: dict, source: str, queries: dict, queries_source: str) -> dict[str, dict[str, int]]:
        """``qrels`` without the qids missing from ``queries`` and the judged docids missing from the corpus."""
        bad_q, bad_d = (
            self._unknown(qrels, source, "qids", queries, queries_source),
            self._unknown((d for j in qrels.values() for d in j), source, "judged docids"),
        )
        return {q: {d: g for d, g in j.items() if d not in bad_d} for q, j in qrels.items() if q not in bad_q}

    def _read_teacher(self, positives: dict[str, list[str]]) -> TeacherScores | None:
        paths = self.hparams.teacher_scores
        if not paths and not self.hparams.teacher_from_negatives:
            return None
        if self.hparams.compact:
            return read_teacher_compact(self.hparams, positives, self.row_of, self._unknown)
        teacher = read_teacher_files(paths, self._unknown)
        added = 0
        for qid, pairs in teacher.pairs.items():  # the teacher's positives are positives
            known = set(positives.get(qid, []))
            new = sorted({p for p, _ in pairs if p in self.row_of and p not in known})
            if new:
                positives[qid] = sorted(known | set(new))
                added += len(new)
        if added:
            log.info("teacher-score files add %d positives not in the qrels", added)
        return teacher

    def _add_teacher_negatives(
        self, negatives: dict[str, list[str]], positives: dict[str, list[str]], add: bool = True
    ):
        """The teacher's negatives join the candidates (unless not ``add``); ``teacher_pair_filter`` drops inverted
        pairs."""
        if self.teacher is None or self.hparams.compact:
            return (
                negatives
                if self.teacher is None
                else WithTeacherNegatives(negatives, self.teacher, positives, self.row_of)
            )
        for qid, pairs in self.teacher.pairs.items() if add else ():
            pos = set(positives.get(qid, []))
            have = negatives.setdefault(qid, [])
            seen = set(have)
            for _, neg in pairs:
                if neg not in seen and neg not in pos and neg in self.row_of:
                    have.append(neg)
                    seen.add(neg)
        if self.hparams.teacher_pair_filter:
            pairs, candidates = drop_teacher_inversions(self.teacher, negatives, positives)
            log.info(
                "teacher_pair_filter: dropped %d teacher pairs and %d candidates scored at or above a positive",
                pairs,
                candidates,
            )
        return negatives

    def _negatives_from_file(
        self, path: str, positives: dict[str, list[str]], swap: bool = False
    ) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
        """The file's negative candidates per query (known docids, never a positive) and its scores; with
        ``teacher_from_negatives`` these are merged into the teacher's at set-up, replace them in a ``swap``."""
        if self.hparams.compact:
            return negatives_compact(path, positives, self.row_of, self._unknown)
        teacher = self.teacher if self.hparams.teacher_from_negatives else None
        return negatives_from_file(path, positives, self.row_of, self._unknown, teacher, swap)

    def set_negatives(self, path: str, version: int, teacher_path: str | None = None) -> None:
        """Swap in a new negatives file (an index refresh, :mod:`dr.refresh`) from the next batch on.

        Only the candidates change (and, with ``teacher_from_negatives``, each query's teacher scores,
        replaced by the new file's: one normalisation per query list);
        the queries, positives and batch order stay, so the run stays reproducible given the
        versions' swap steps. Needs ``num_workers=0``: worker processes hold their own copies.
        ``teacher_path``: the new pairs scored by the refresh teacher; they replace each query's
        teacher scores and candidates (the teacher file's): KD lists full, one list per query.
        """
        if self.hparams.num_workers > 0:
            raise RuntimeError("negatives can only be swapped during training with data.num_workers=0")
        positives = self.train_dataset.positives
        negatives, scores = self._negatives_from_file(path, positives, swap=True)
        if teacher_path and self.teacher is not None:
            for qid, record in read_negatives(teacher_path).items():
                if scored := record_scores(record):  # the new list's scores and pairs (TAS-Balanced's margins)
                    self.teacher.scores[qid], self.teacher.pairs[qid] = (
                        scored,
                        [(p, n) for p in record.positives for n in record.negatives],
                    )
        negatives = self._add_teacher_negatives(negatives, positives, add=not teacher_path)
        self.train_dataset.negatives = negatives
        self.train_dataset.scores = scores
        self.train_dataset.version = version

    def _setup_validation(self, bm25: BM25) -> None:
        qids = list(self.val_queries)
        rows, _ = bm25.search([self.val_queries[q] for q in qids], self.hparams.val_depth)
        docids = {self.corpus[int(r)]["docid"] for row in rows for r in row}
        for qid in qids:
            docids.update(d for d in self.val_qrels.get(qid, {}) if d in self.row_of)
        self.val_docids = sorted(docids)
        self.val_passages = [self.passage_text(d) for d in self.val_docids]

    def passage_text(self, docid: str) -> str:
        return passage_texts(self.corpus, [self.row_of[docid]])[0]

    # ------------------------------------------------------------------ loaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        hp = self.hparams
        if self.batch_sampler_factory is None:
            sampler = QueryBatchSampler(
                len(self.train_dataset), hp.batch_size, hp.seed, drop_last=True, rank=rank, world_size=world_size
            )
        else:
            sampler = self.batch_sampler_factory(
                qids=self.train_dataset.qids, batch_size=hp.batch_size, seed=hp.seed, rank=rank, world_size=world_size
            )
        self._resolve_score_scale()
        if len(sampler) == 0:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size}: {len(self.train_dataset)} training queries cannot fill "
                f"one batch of "
                f"{self.hparams.batch_size} x {world_size} ranks"
            )
        return ResumableDataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_train,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            batches_done=lambda: self._batches_done_in_epoch(len(sampler)),
        )

    def _resolve_score_scale(self) -> None:
        """A pair sampler whose kernel needs the student's logits (SimANS) and has no ``score_scale``
        of its own gets the datamodule's (handed down by :func:`dr.training.train`)."""
        if getattr(self.pair_sampler, "score_scale", 1.0) is None:
            if self.score_scale is None:
                raise RuntimeError(
                    f"{self.pair_sampler!r} has no score_scale: give RetrievalDataModule(score_scale=...) "
                    "(dr.training.train passes the student's, dr.miners.candidates.student_score_scale)"
                )
            self.pair_sampler.score_scale = float(self.score_scale)
            log.info("%r: kernel on logits = %g × similarity", self.pair_sampler, self.pair_sampler.score_scale)

    def _batches_done_in_epoch(self, batches_per_epoch: int) -> int:
        trainer = self.trainer
        done = trainer.global_step * trainer.accumulate_grad_batches
        return done - trainer.current_epoch * batches_per_epoch

    def collate_train(self, examples: list[dict]) -> dict:
        """The training batch of ``examples`` (:func:`dr.training.batch.contrastive_batch`)."""
        ds = self.train_dataset
        return contrastive_batch(examples, ds.positives, self.passage_text, self.row_of, ds.teacher)

    def val_dataloader(self):
        if not self.val_queries:
            return []
        items = [("passage", d, t) for d, t in zip(self.val_docids, self.val_passages)]
        items += [("query", q, t) for q, t in self.val_queries.items()]
        return DataLoader(items, batch_size=64, shuffle=False, collate_fn=self.collate_val)

    @staticmethod
    def collate_val(items) -> dict:
        return {"kinds": [k for k, _, _ in items], "ids": [i for _, i, _ in items], "texts": [t for _, _, t in items]}
