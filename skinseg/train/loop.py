"""The trainer: a short ``fit`` calling named hooks, nnU-Net style, without the 1400 lines.

    fit: for each epoch -> on_epoch_start -> train_epoch (train_step per batch) -> validate -> on_epoch_end

The run folder it writes (config, metrics log, checkpoints, end marker) is :class:`skinseg.runs.RunFolder`;
the checkpoint files are :mod:`skinseg.checkpoint`'s.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from skinseg.checkpoint import (RESUME_KEYS, checkpoint_epoch, load_checkpoint, load_model_weights, repair_best,
                                rng_state, save_checkpoint, set_rng_state)
from skinseg.config import Config
from skinseg.data.batch_augment import BatchAugment, batch_generator
from skinseg.data.dataset import make_dataset, make_loader
from skinseg.errors import CheckpointError, ConfigError, DataError, Interrupted, NonFiniteOutputError, TrainingError
from skinseg.files import ensure_writable
from skinseg.losses import CombinedLoss
from skinseg.metrics import sum_over_ranks
from skinseg.models import model_from_config
from skinseg.paths import resolve
from skinseg.predict.decisions import GATE_CUTOFFS
from skinseg.predict.loop import OriginalMasks, evaluate_model, needs_original
from skinseg.progress import bar as progress_bar
from skinseg.runs import RunFolder, config_changes, find_complete_run
from skinseg.runtime import Runtime, amp_for_model, autocast, cleanup, seed_everything, setup_runtime
from skinseg.train.optim import Schedule, build_optimizer, ema_model, ema_step


class Trainer:
    """Trains one config; ``fit()`` returns a summary with the run folder and the best score."""

    def __init__(self, cfg: Config, progress: bool = True):
        cfg = cfg.resolved()  # the run folder and checkpoints store the normalization actually used
        self.cfg = cfg
        self.rt: Runtime = setup_runtime(cfg)
        # before the caches are built: a bad resume, a busy run folder or a read-only output_dir fails at once
        self.run: RunFolder | None = None
        self._resumed = self._check_resume(cfg.load) if cfg.load else None
        try:
            self._build(cfg, progress)
            self.run = self._resume() if cfg.load else self._new_run()
        except BaseException:
            if self.run is not None:
                self.run.unlock()  # a failed start leaves the run free to resume
            raise

    def _build(self, cfg: Config, progress: bool) -> None:
        """Data, model, optimizer, schedule, loss and EMA of a new or resumed run."""
        if not cfg.load and self.rt.main:
            ensure_writable(resolve(cfg.output_dir), "output_dir",
                            "choose a writable output_dir (config key or --set output_dir=DIR)")
        self.progress = progress and self.rt.main
        seed_everything(cfg.seed)
        self.train_loader = make_loader(cfg, cfg.train_split, True, self.rt.rank, self.rt.world)
        _check_has_positives(self.train_loader.dataset)
        self.val_loader = make_loader(cfg, cfg.val_split, False, self.rt.rank, self.rt.world,
                                      dataset=make_dataset(cfg, cfg.val_split, train=False))
        self.originals = OriginalMasks(self.val_loader.dataset.cache) if needs_original(
            self.val_loader.dataset.cache) else None
        self.model = model_from_config(cfg).to(self.rt.device)
        amp_dtype, why = amp_for_model(self.rt.amp_dtype, self.rt.device, self.model)
        if why:
            self.rt.amp_dtype = amp_dtype
            if self.progress:
                tqdm.write(why)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if hasattr(self.model, "freeze_encoder"):
            self.model.freeze_encoder(False)  # the optimizer must see every parameter; freezing is per epoch
        self.optimizer = build_optimizer(cfg, self.model)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.accumulate)
        self.schedule = Schedule(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.use_scaler)
        self.loss_fn = CombinedLoss.from_config(cfg).to(self.rt.device)
        self.ema = None
        if cfg.ema:
            self.ema = ema_model(self.model, cfg.ema, cfg.ema_warmup)
        self.net = self.model
        if self.rt.distributed:
            ids = [self.rt.local_rank] if self.rt.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids,
                                               find_unused_parameters=cfg.freeze_encoder > 0)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.epoch, self.step = 0, 0
        self.batch_augment = BatchAugment(cfg) if cfg.augment_on == "gpu" else None
        self.history: list[dict[str, Any]] = []
        self.best = {"score": -1.0, "epoch": 0, "thresholds": [cfg.threshold] * cfg.classes,
                     "gates": [0.0] * cfg.classes}
        # the decision (thresholds, gates) tuned at the latest validation, on the weights last.pt then holds;
        # best.pt keeps the best epoch's (self.best), so each checkpoint carries thresholds tuned on its own weights
        self.latest = dict(self.best)
        self.stale_epochs = 0

    @property
    def run_dir(self) -> Path:
        return self.run.path

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            reason = self.run_epochs()
            if self.rt.main:
                self.run.mark_done(reason, self.epoch, self.best["epoch"], self.best["score"],
                                   self.cfg.checkpoint_rule)
                if self.cfg.results_file:
                    self._write_results_row()
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.run.unlock()
            if self.rt.distributed:
                cleanup()
        return self.summary()

    def run_epochs(self) -> str:
        """Train the remaining epochs; why training ended: ``completed`` or ``early_stop``."""
        for epoch in range(self.epoch, self.cfg.epochs):
            self.on_epoch_start(epoch)
            train_loss, seconds = self.train_epoch(epoch)
            self.sync_buffers()
            result, val_seconds = None, 0.0
            if self.validates(epoch):
                start = time.perf_counter()
                result = self.validate(epoch)
                val_seconds = time.perf_counter() - start
            if self.on_epoch_end(epoch, train_loss, seconds, result, val_seconds):
                return "early_stop"
        return "completed"

    def on_epoch_start(self, epoch: int) -> None:
        self.train_loader.sampler.set_epoch(epoch)
        self.net.train()
        if self.cfg.freeze_encoder and hasattr(self.model, "freeze_encoder"):
            # after .train(), so that a frozen encoder's BatchNorm stays in eval mode
            self.model.freeze_encoder(epoch < self.cfg.freeze_encoder)

    def validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is validated: every ``val_every`` epochs and always the last."""
        return (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training loader; (mean loss, seconds).

        The loss is summed on the device and read (a host synchronisation) only every ``log_every`` optimizer
        steps and at the end of the epoch: that read logs a metrics.csv step row (mean loss since the last read)
        and checks that the loss is finite.
        """
        start = time.perf_counter()
        n = len(self.train_loader)
        bar = progress_bar(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                           show=self.progress)
        self.optimizer.zero_grad(set_to_none=True)
        # the image-weighted loss since the last read stays on the device; the epoch's total is the sum of the
        # reads (the last batch is always read)
        window = torch.zeros((), dtype=torch.float64, device=self.rt.device)
        total, count, window_images = 0.0, 0, 0
        for k, batch in enumerate(bar):
            update = (k + 1) % self.cfg.accumulate == 0 or k + 1 == n
            loss = self.train_step(batch, epoch, update, k)
            window += loss.double() * len(batch["image"])
            window_images += len(batch["image"])
            if (update and self.step % self.cfg.log_every == 0) or k + 1 == n:
                window_sum = window.item()
                total, count = total + window_sum, count + window_images
                mean = window_sum / max(window_images, 1)
                window.zero_()
                window_images = 0
                if not math.isfinite(mean):
                    self._non_finite(mean, batch, epoch)
                if update:
                    self._log({"kind": "step", "epoch": epoch + 1, "step": self.step, "loss": mean,
                               "lr": self.optimizer.param_groups[-1]["lr"]})
                bar.set_postfix(loss=f"{mean:.4f}")
        total, count = sum_over_ranks(torch.tensor([total, count], dtype=torch.float64)).tolist()
        seconds = time.perf_counter() - start
        return total / max(count, 1), seconds

    def train_step(self, batch: dict, epoch: int, update: bool, index: int) -> torch.Tensor:
        """Forward, loss and backward of batch ``index`` of the epoch (an optimizer step when ``update``); the
        detached loss, left on the device (reading it would wait for the GPU)."""
        x = batch["image"].to(self.rt.device, non_blocking=True)
        y = batch["mask"].to(self.rt.device, non_blocking=True)
        if self.batch_augment is not None:  # seeded by the batch's place in the run: a resumed run augments alike
            x, y = self.batch_augment(x, y, batch_generator(self.cfg.seed, self.rt.rank, epoch, index))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with autocast(self.rt.device, self.rt.amp_dtype):
                out = self.net(x)
            loss = self.loss_fn(out, y)
            self.scaler.scale(loss / self.cfg.accumulate).backward()
        except torch.cuda.OutOfMemoryError as e:
            raise TrainingError(
                f"CUDA out of memory with batch_size {self.cfg.batch_size} at image_size {self.cfg.image_size} "
                f"({self.cfg.model}); try batch_size {max(1, self.cfg.batch_size // 2)} with accumulate "
                f"{self.cfg.accumulate * 2}, amp: bf16, or a smaller image_size"
            ) from e
        if update:
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.after_batch()
            if self.ema is not None:
                self.ema.update(self.model, step=ema_step(self.step))
            self.step += 1
        return loss.detach()

    def sync_buffers(self) -> None:
        """Average BatchNorm statistics across ranks, so every rank validates and saves the same model."""
        if not self.rt.distributed:
            return
        for buf in self.model.buffers():
            if buf.is_floating_point():
                torch.distributed.all_reduce(buf)
                buf /= self.rt.world

    def validate(self, epoch: int):
        model = self.ema.module if self.ema is not None else self.model
        try:
            return evaluate_model(model, self.val_loader, self.rt.device,
                                  thresholds=[self.cfg.threshold] * self.cfg.classes, amp_dtype=self.rt.amp_dtype,
                                  loss_fn=self.loss_fn, channels_last=self.cfg.channels_last,
                                  originals=self.originals,
                                  gate_cutoffs=GATE_CUTOFFS if self.cfg.aux_head else (0.0,), tta=self.cfg.tta)
        except NonFiniteOutputError as e:
            raise self._diverged("validation outputs became NaN or infinite", epoch, e.ids) from None

    def on_epoch_end(self, epoch: int, train_loss: float, seconds: float, result, val_seconds: float) -> bool:
        """Log, tune thresholds, step reduce_lr, save checkpoints; True to stop early.

        ``result`` is None on epochs that were not validated (``val_every``): they log the training loss only
        and count neither as improved nor as stale. ``last.pt`` is written every ``checkpoint_every`` epochs and
        at the last one, ``best.pt`` whenever the score improves.
        """
        self.epoch = epoch + 1
        row = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "train_loss": train_loss,
               "epoch_seconds": seconds, "images_per_s": len(self.train_loader.dataset) / max(seconds, 1e-9),
               "lr": self.optimizer.param_groups[-1]["lr"], "val_seconds": val_seconds}
        improved, score = False, None
        if result is not None:
            thresholds, gates = [self.cfg.threshold] * self.cfg.classes, [0.0] * self.cfg.classes
            tuned, tuned_macro, each = float("nan"), float("nan"), None
            if self.cfg.tune_thresholds:
                thresholds, gates, tuned = result.sweep.tune(tune_gate=self.cfg.aux_head)
                each = result.sweep.tune_each()  # the per-attribute operating point
                tuned_macro = result.sweep.scores(each).macro_jaccard
            row.update({"val_loss": result.loss, **result.scores.flat("val_"), "val_tuned_jaccard": tuned,
                        "val_tuned_macro_jaccard": tuned_macro})
            score = tuned if self.cfg.tune_thresholds else result.scores.overall
            self.latest = {"epoch": self.epoch, "thresholds": thresholds, "gates": gates,
                           "thresholds_per_attribute": each}
            improved = score > self.best["score"]
            if improved:
                self.best = {"score": score, "epoch": self.epoch, "thresholds": thresholds, "gates": gates,
                             "thresholds_per_attribute": each}
                self.stale_epochs = 0
            else:
                self.stale_epochs += 1
        self.schedule.after_epoch(score)
        # stale_epochs only grows on validated epochs, so the patience is only reached on one
        stop = self.cfg.patience is not None and self.stale_epochs >= self.cfg.patience
        self.history.append(row)  # before the checkpoints, which store the history
        start = time.perf_counter()
        if self.rt.main:
            # last first, then best: a kill between the two leaves last.pt naming this epoch as best, and
            # resuming rewrites best.pt from it (checkpoint.repair_best)
            write_last = self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs or stop
            state = self._state() if write_last or improved else None
            if write_last:
                save_checkpoint({**state, **self._decision(self.latest)}, self.run.last)
            if improved:
                save_checkpoint({**state, **self._decision(self.best)}, self.run.best)
        row["checkpoint_seconds"] = time.perf_counter() - start
        self._log(row)
        if self.progress:
            said = (f", val loss {result.loss:.4f}, val jaccard {result.scores.overall:.4f}, "
                    f"tuned {row['val_tuned_jaccard']:.4f}" if result is not None else "")
            tqdm.write(f"epoch {self.epoch}: train loss {train_loss:.4f}{said}; training {seconds:.1f}s, "
                       f"validation {val_seconds:.1f}s, checkpoints {row['checkpoint_seconds']:.1f}s")
        return stop

    # ---- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        model = self.ema.module if self.ema is not None else self.model
        return {
            "model": model.state_dict(),
            "train_model": self.model.state_dict() if self.ema is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "best": self.best,  # each checkpoint adds its own decision keys (_decision) where it is written
            "latest": self.latest,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
            "rng": rng_state(),
        }

    @staticmethod
    def _decision(tuned: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's decision keys from ``self.best`` or ``self.latest``; ``thresholds_epoch`` says which
        validation tuned them (a checkpoint's own epoch, or an earlier one where the epoch was not validated)."""
        return {"thresholds": tuned["thresholds"], "thresholds_per_attribute": tuned.get("thresholds_per_attribute"),
                "gates": tuned["gates"], "thresholds_epoch": tuned["epoch"]}

    def _check_resume(self, load: str) -> dict[str, Any]:
        """The state of the checkpoint to resume, once its run folder is this process's (locked) and writable
        and the config trains what the run was trained with; a one-line error otherwise."""
        path = resolve(load)
        run = RunFolder(path.parent)
        if not path.exists() and run.config_file.exists():
            if self.rt.main:
                run.remove_stale_temp_files()
            raise CheckpointError(f"{path} does not exist: the run {run.path} stopped before writing it (a kill "
                                  "during its first epoch or first checkpoint); there is nothing to resume, so train "
                                  "it again as a new run (drop `load`)")
        state = load_checkpoint(path, map_location=self.rt.device)
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}, which resuming needs (not a last.pt or best.pt "
                                  "written by `skinseg train`); resume from the run's last.pt, or drop `load`")
        saved = state["config"].get("model")
        if saved != self.cfg.model:
            raise CheckpointError(
                f"{path} is a checkpoint of model {saved!r} but this config trains {self.cfg.model!r}; "
                f"set model: {saved} (and its options) to resume it, or drop `load`"
            )
        changed = config_changes(state["config"], self.cfg)
        if changed:
            raise ConfigError(
                f"load: {path} was trained with {', '.join(f'{k}={old!r}' for k, old, _ in changed)}, but this config "
                f"sets {', '.join(f'{k}={new!r}' for k, _, new in changed)}; a resumed run keeps its config "
                f"(resume with --config {run.config_file}), or start a new run without `load`")
        if self.rt.main:
            ensure_writable(run.path, "the run folder", "make it writable (or free space) to resume")
            run.lock()
        self.run = run
        return state

    def _resume(self) -> RunFolder:
        state, path, run = self._resumed, resolve(self.cfg.load), self.run
        self._resumed = None
        load_model_weights(self.model, {**state, "model": state["train_model"] or state["model"]}, path)
        if self.ema is not None and state["ema"] is not None:
            # runs from before timm's ModelEmaV3 saved torch's averaged model, which also counted its updates
            self.ema.load_state_dict({k: v for k, v in state["ema"].items() if k != "n_averaged"})
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best, self.stale_epochs = state["history"], state["best"], state["stale_epochs"]
        # a checkpoint from before "latest" holds the best epoch's decision only
        self.latest = state.get("latest") or dict(self.best)
        set_rng_state(state["rng"])
        if self.rt.main:
            run.remove_stale_temp_files()
            if path == run.last:
                repair_best(run.best, state)
            run.truncate_metrics(self.step, self.epoch, self.history)
            if Config.from_dict({**Config().to_dict(), **run.config()}).to_dict() != self.cfg.to_dict():
                run.update_config(self.cfg.to_yaml_text())  # the MAY_CHANGE_ON_RESUME keys set anew
            run.clear_done()
        return run

    def _new_run(self) -> RunFolder:
        path = RunFolder.new_path(self.cfg.output_dir, self.cfg.model, self.cfg.run_name or "+".join(self.cfg.loss))
        if self.rt.distributed:  # every rank must agree on the folder name
            names = [None] * self.rt.world
            torch.distributed.all_gather_object(names, str(path))
            path = Path(names[0])
        if not self.rt.main:
            return RunFolder(path)
        return RunFolder.create(path, self.cfg.to_yaml_text())

    def _write_results_row(self) -> None:
        """The run's comparison row into ``results_file`` (evaluates its chosen checkpoint on dev and val)."""
        from skinseg.results import append_row, run_row

        path = append_row(self.cfg.results_file, run_row(self.run.path))
        if self.progress:
            tqdm.write(f"comparison row of {self.run.path.name} written to {path}")

    def _interrupted(self) -> Interrupted:
        """Ctrl-C: what is kept and how to go on, as one line."""
        last = self.run.last if self.run is not None else None
        if last is not None and last.exists():
            kept = (f"{last} holds epoch {checkpoint_epoch(last)}: resume with --set load={last}")
        else:
            kept = "no checkpoint was written yet: train it again"
        return Interrupted(f"interrupted at epoch {self.epoch + 1}; nothing is damaged, {kept}")

    def _log(self, row: dict[str, Any]) -> None:
        if self.rt.main:
            self.run.log(row)

    def _non_finite(self, loss: float, batch: dict, epoch: int) -> None:
        raise self._diverged(f"loss became {loss}", epoch, list(batch["id"]))

    def _diverged(self, what: str, epoch: int, ids: list[str]) -> TrainingError:
        last = self.run.last
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        return TrainingError(
            f"{what} at epoch {epoch + 1}, step {self.step + 1} (images {', '.join(ids[:4])}); {kept}. "
            "Try a lower lr, grad_clip: 1.0, warmup_epochs, or amp: off"
        )

    def summary(self) -> dict[str, Any]:
        return _summary(self.run_dir, self.best, self.epoch, self.history)


def _summary(run_dir: Path, best: dict[str, Any], epochs_run: int, history: list[dict]) -> dict[str, Any]:
    """What training returns: the run folder, the best epoch's score, thresholds and gates, and the history."""
    return {"run_dir": str(run_dir), "best_epoch": best["epoch"], "best_score": best["score"],
            "thresholds": best["thresholds"], "gates": best["gates"], "epochs_run": epochs_run, "history": history}


def _check_has_positives(dataset) -> None:
    """Training on a split whose masks are all empty learns nothing; say so instead of training."""
    present = dataset.cache.present
    if present is not None and len(dataset) and not present[dataset.indices].any():
        raise DataError(f"every mask of the training split ({dataset.cache.path.name}, {len(dataset)} images) is "
                        "empty: there is nothing to learn. Check the ground-truth folder (masks must be 0/255 PNGs)")


def train(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Train one config and return the summary (run folder, best epoch and score, tuned thresholds)."""
    return Trainer(cfg, progress=progress).fit()


def train_or_reuse(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """The summary of a finished run of this very config below ``output_dir`` (saying so), else :func:`train`.

    Training is seeded, so a finished run is what training again would give; `skinseg report` and
    notebook 03 rebuild figures from it instead of retraining. Delete the run (or change output_dir) to retrain.
    """
    if not cfg.load:
        done = find_complete_run(resolve(cfg.output_dir), cfg.to_dict())
        if done is not None:
            if progress:
                print(f"reusing the finished run {done} (same config): not training again; delete it or change "
                      "output_dir to retrain", flush=True)
            state = load_checkpoint(RunFolder(done).last)
            return {**_summary(done, state["best"], state["epoch"], state["history"]), "reused": True}
    return train(cfg, progress)
