"""The training loop of a fine-tune, as plain functions over a model directory and examples.

Deterministic for a seed: each epoch's order comes from its own generator (seed, epoch), and a
checkpoint holds everything else that moves (weights, optimizer, scheduler, RNG states, the
step), so a run resumed from a checkpoint ends with the same weights as one that never stopped.

Checkpoints are written without pickle: tensors in safetensors files, the rest as JSON.

With ``method: lora`` the base is frozen and wrapped with a peft adapter
(``worker.runners.finetune.lora``): the checkpoint's model file then holds only the weights that
train. Chat records (``worker.kinds.finetune_data.Messages``) are rendered with the base's chat template and carry loss on
the assistant's tokens only.

Imports: ``barge``, ``worker.models.hf``, ``worker.models.chat``, ``worker.kinds.finetune_data``,
``worker.runners.finetune.lora``, ``worker.runners.finetune.metrics``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from barge.errors import PermanentJobError
from barge.specs import IMAGE_TASKS, FinetuneSpec
from worker.kinds.finetune_data import Messages, steps_per_epoch
from worker.models import chat, hf, seq2seq
from worker.runners.finetune import lora
from worker.runners.finetune.metrics import classification_metrics, exact_match

MAX_GRAD_NORM = 1.0  # gradients are clipped to this norm, as Hugging Face's Trainer does
EMBED_SCALE = 20.0  # cosine similarities are multiplied by this before the softmax
IGNORE = -100  # label of tokens that carry no loss (prompt and padding)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
BEST_FILE = "best.safetensors"  # with select best: the best epoch's weights so far
EXACT_MATCH_EXTRA_TOKENS = 8  # generated beyond the expected answer's length when scoring


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the examples in ``epoch``: a permutation fixed by (seed, epoch) alone."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n, generator=gen)]


def linear_schedule(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class Trainer:
    """Model, optimizer and schedule for one fine-tune; ``step`` is the optimizer steps done."""

    def __init__(
        self,
        spec: FinetuneSpec,
        model_dir: Path,
        device: Any,
        train: Sequence[tuple[str, str]],
        labels: list[str],
    ):
        import torch

        self.spec = spec
        self.hp = spec.hyperparameters
        self.device = device
        self.train = list(train)
        self.labels = labels
        self.label_ids = {label: i for i, label in enumerate(labels)}
        self.steps_per_epoch = steps_per_epoch(len(self.train), self.hp)
        self.total_steps = self.hp.epochs * self.steps_per_epoch
        self.step = 0
        # Tokens trained on: each training example's (after truncation), each time a step
        # trained on it; None for image tasks, or when resumed from a checkpoint without it.
        self.tokens: int | None = None if spec.task in IMAGE_TASKS else 0
        torch.manual_seed(self.hp.seed)  # a new head's initial weights come from the seed
        random.seed(self.hp.seed)
        # For an image task ``tokenizer`` is the model's image processor.
        self.tokenizer, self.model = _load(spec, model_dir, labels, self.label_ids, device)
        if getattr(self.tokenizer, "pad_token", "") is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.images: dict[str, Any] = {}  # image task: each image's prepared pixels
        # Tokens kept per example: max_length, clamped to what the model takes.
        limit = hf.position_limit(self.model, self.tokenizer)
        self.max_length = min(self.hp.max_length, limit) if limit else self.hp.max_length
        self.lora = spec.lora
        if self.lora is not None:
            self.model = lora.wrap(self.model, self.lora, spec.task)
        if self.lora is None or self.lora.quantize is None:
            self.model.to(device)
        self.model.train()
        # With select best: the best epoch's trainable weights (on the CPU) and its number.
        self.best: tuple[int, dict[str, Any]] | None = None
        self.optimizer = _optimizer(self.model, self.hp.learning_rate, self.hp.weight_decay)
        warmup = math.ceil(self.hp.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(warmup, self.total_steps)
        )
        self.amp_dtype: Any = hf.autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._order: tuple[int, list[int]] | None = None

    # --- steps --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next step belongs to."""
        return self.step // self.steps_per_epoch

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @property
    def epoch_ends(self) -> bool:
        """True right after the last step of an epoch."""
        return self.step > 0 and self.step % self.steps_per_epoch == 0

    @property
    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def _autocast(self) -> Any:
        return hf.autocast(self.amp_dtype)

    def micro_batches(self, step: int) -> list[list[tuple[str, str]]]:
        """The examples of each forward pass of optimizer step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.train), self.hp.seed, epoch))
        order = self._order[1]
        bs, accum = self.hp.batch_size, self.hp.gradient_accumulation_steps
        out = []
        for k in range(within * accum, (within + 1) * accum):
            idx = order[k * bs : (k + 1) * bs]
            if idx:
                out.append([self.train[i] for i in idx])
        return out

    def train_step(self) -> Any:
        """One optimizer step; returns its mean loss as a tensor (no device sync)."""
        import torch

        groups = self.micro_batches(self.step)
        total = None
        for batch in groups:
            with self._autocast():
                loss = self.loss(batch) / len(groups)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    # --- losses -------------------------------------------------------------------------------

    def loss(self, batch: Sequence[tuple[str, str]]) -> Any:
        return self.forward(batch)[0]

    def forward(self, batch: Sequence[tuple[str, str]]) -> tuple[Any, int]:
        """(mean loss, correct predictions) of one batch; accuracy is for classify and embed."""
        import torch

        task = self.spec.task
        max_length = self.max_length
        if task == "image_classify":
            pixels = torch.stack([self.images[image] for image, _ in batch]).to(self.device)
            target = torch.tensor([self.label_ids[y] for _, y in batch], device=self.device)
            logits = self.model(pixel_values=pixels).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, target)
            return loss, int((logits.argmax(-1) == target).sum()) if not self.model.training else 0
        if task == "classify":
            loss, guesses = self._classify(batch, predict=not self.model.training)
            if self.model.training:
                return loss, 0
            return loss, sum(
                g == self.label_ids[y] for g, (_, y) in zip(guesses, batch, strict=True)
            )
        if task == "text2text":
            loss, tokens = seq2seq.loss(self.model, self.tokenizer, batch, max_length, self.device)
            self._trained_on(tokens)
            return loss, 0
        if task == "generate":
            ids, labels, mask = self._completion_batch(batch)
            out = self.model(input_ids=ids, attention_mask=mask, labels=labels)
            return out.loss, 0
        anchors = self._embed([a for a, _ in batch])
        positives = self._embed([p for _, p in batch])
        scores = anchors @ positives.T * EMBED_SCALE
        target = torch.arange(len(batch), device=self.device)
        loss = torch.nn.functional.cross_entropy(scores.float(), target)
        return loss, int((scores.argmax(-1) == target).sum()) if not self.model.training else 0

    def _trained_on(self, tokens: int) -> None:
        """Count a batch's tokens (padding left out) in ``tokens``, when it is trained on
        (evaluation runs the same code with the model in eval mode)."""
        if self.model.training and self.tokens is not None:
            self.tokens += tokens

    def _embed(self, texts: list[str]) -> Any:
        import torch

        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        self._trained_on(int(enc["attention_mask"].sum()))
        enc = enc.to(self.device)
        hidden = self.model(**enc).last_hidden_state
        pooled = hf.mean_pool(hidden, enc["attention_mask"])
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)

    def _completion_batch(self, batch: Sequence[tuple[str, str]]) -> tuple[Any, Any, Any]:
        import torch

        rows = [
            chat_tokens(self.tokenizer, self._eos(), p.messages(), self.max_length)
            if isinstance(p, Messages)
            else completion_tokens(self.tokenizer, self._eos(), p, c, self.max_length)
            for p, c in batch
        ]
        self._trained_on(sum(len(ids) for ids, _ in rows))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        return ids.to(self.device), labels.to(self.device), mask.to(self.device)

    def _eos(self) -> int | None:
        eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return eos if eos is not None else self.tokenizer.sep_token_id

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(self, examples: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Mean loss (weighted by batch size); for classify, accuracy, per-class precision,
        recall and F1, macro-F1 and the confusion matrix; for embed, in-batch retrieval
        accuracy; for generate, exact match of greedy answers."""
        import torch

        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        truth: list[int] = []
        predicted: list[int] = []
        answers: list[str] = []
        try:
            with torch.no_grad():
                for start in range(0, len(examples), self.hp.batch_size):
                    batch = examples[start : start + self.hp.batch_size]
                    with self._autocast():
                        if self.spec.task == "classify":
                            loss, guesses = self._classify(batch)
                            truth.extend(self.label_ids[y] for _, y in batch)
                            predicted.extend(guesses)
                            right = sum(
                                g == self.label_ids[y]
                                for g, (_, y) in zip(guesses, batch, strict=True)
                            )
                        else:
                            loss, right = self.forward(batch)
                        if self.spec.task == "generate":
                            answers.extend(self.generate_answers(batch))
                    loss_sum += float(loss) * len(batch)
                    correct += right
                    count += len(batch)
        finally:
            self.model.train()
        out: dict[str, Any] = {"validation_loss": round(loss_sum / max(1, count), 6)}
        if self.spec.task in ("classify", "embed", "image_classify"):
            out["validation_accuracy"] = round(correct / max(1, count), 6)
        if self.spec.task == "classify":
            out.update(classification_metrics(truth, predicted, self.labels))
        if self.spec.task == "generate":
            out["validation_exact_match"] = exact_match(answers, [c for _, c in examples])
        if self.spec.task == "text2text":
            out.update(self._text_metrics(examples))
        return out

    # --- images -------------------------------------------------------------------------------

    def load_images(self, values: Sequence[str], read: Any, threads: int) -> None:
        """Prepare every distinct image once with the model's image processor (decoded by
        ``read(value, mode)`` on ``threads`` threads), kept for every epoch. An image that no
        longer decodes (its object changed since planning) fails the fine-tune."""
        from concurrent.futures import ThreadPoolExecutor

        from barge.records.images import ImageError

        mode = "L" if getattr(self.model.config, "num_channels", 3) == 1 else "RGB"
        processor = self.tokenizer

        def prepare(value: str) -> Any:
            try:
                image = read(value, mode)
            except ImageError as exc:
                raise PermanentJobError(
                    f"a training image no longer decodes (changed since planning?): {exc.message}"
                ) from None
            return processor(images=image, return_tensors="pt")["pixel_values"][0]

        todo = sorted(set(values) - set(self.images))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for value, pixels in zip(todo, pool.map(prepare, todo), strict=True):
                self.images[value] = pixels

    def _text_metrics(self, examples: Sequence[tuple[str, str]]) -> dict[str, float]:
        """BLEU, chrF and exact match of greedy outputs against the targets."""
        targets = [t for _, t in examples]
        room = seq2seq.target_tokens(self.tokenizer, targets) + 8
        self.model.eval()
        try:
            with self._autocast():
                outputs = seq2seq.generate_texts(
                    self.model,
                    self.tokenizer,
                    [s for s, _ in examples],
                    max_length=self.max_length,
                    max_new_tokens=min(room, self.max_length),
                    batch_size=self.hp.batch_size,
                    device=self.device,
                )
        finally:
            self.model.train()
        return seq2seq.text_metrics(outputs, targets)

    def _classify(
        self, batch: Sequence[tuple[str, str]], predict: bool = True
    ) -> tuple[Any, list[int]]:
        """(mean loss, predicted label ids) of one classify batch; no predictions (and no
        device sync) while training."""
        import torch

        enc = self.tokenizer(
            [t for t, _ in batch],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        self._trained_on(int(enc["attention_mask"].sum()))
        enc = enc.to(self.device)
        target = torch.tensor([self.label_ids[y] for _, y in batch], device=self.device)
        logits = self.model(**enc).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss, [int(i) for i in logits.argmax(-1).tolist()] if predict else []

    def generate_answers(self, batch: Sequence[tuple[str, str]]) -> list[str]:
        """Greedy answers to each example's prompt (a chat example's messages before its last
        assistant message), tokenized as inference tokenizes them."""
        import torch

        prompts: list[list[int]] = []
        for prompt, _ in batch:
            if isinstance(prompt, Messages):
                text = chat.render(self.tokenizer, prompt.prompt_messages())
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = self.tokenizer(prompt)["input_ids"]
            prompts.append(list(ids))
        longest = max(
            len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in batch
        )
        new_tokens = longest + EXACT_MATCH_EXTRA_TOKENS
        keep = max(1, self.max_length - new_tokens)
        prompts = [p[-keep:] for p in prompts]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every answer starts at the same column
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self._eos(),
        )
        return [
            str(t) for t in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        ]

    # --- selecting the best epoch -------------------------------------------------------------

    def keep_best(self, epoch: int) -> None:
        """Remember the weights that train, as they are now, as the best epoch's."""
        params = lora.trainable(self.model)
        self.best = (epoch, {n: p.detach().to("cpu", copy=True) for n, p in params.items()})

    def restore_best(self) -> int | None:
        """Put the best epoch's weights back; its number, or None when none was kept."""
        import torch

        if self.best is None:
            return None
        epoch, tensors = self.best
        with torch.no_grad():
            for name, param in lora.trainable(self.model).items():
                param.copy_(tensors[name].to(param.device, param.dtype))
        return epoch

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, directory: Path, extra: dict[str, Any]) -> list[Path]:
        """Write the model, optimizer, scheduler, RNG states and step to ``directory``."""
        import torch
        from safetensors.torch import save_file, save_model

        directory.mkdir(parents=True, exist_ok=True)
        if self.lora is not None:
            lora.save_trainable(self.model, directory / MODEL_FILE)
        else:
            save_model(self.model, str(directory / MODEL_FILE))
        files = list(CHECKPOINT_FILES)
        if self.best is not None:
            save_file(
                self.best[1], str(directory / BEST_FILE), metadata={"epoch": str(self.best[0])}
            )
            files.append(BEST_FILE)
        opt = self.optimizer.state_dict()
        tensors: dict[str, Any] = {"rng.cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        scalars: dict[str, dict[str, Any]] = {}
        for pid, values in opt["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        save_file(tensors, str(directory / OPTIMIZER_FILE))
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "total_steps": self.total_steps,
            "param_groups": opt["param_groups"],
            "optimizer_scalars": scalars,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "python_random": _jsonable(random.getstate()),
            "tokens": self.tokens,
            **extra,
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=1))
        return [directory / name for name in files]

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore everything ``save_checkpoint`` wrote; returns the state (with ``extra``)."""
        import torch
        from safetensors.torch import load_file, load_model

        state = json.loads((directory / STATE_FILE).read_text())
        if self.lora is not None:
            lora.load_trainable(self.model, directory / MODEL_FILE)
        else:
            load_model(self.model, str(directory / MODEL_FILE), device=str(self.device))
        if (directory / BEST_FILE).exists():
            from safetensors import safe_open

            with safe_open(str(directory / BEST_FILE), framework="pt") as f:
                epoch = int((f.metadata() or {})["epoch"])
            self.best = (epoch, load_file(str(directory / BEST_FILE)))
        tensors = load_file(str(directory / OPTIMIZER_FILE))
        opt_state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if not name.startswith("state."):
                continue
            _, pid, key = name.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = value
        for pid, values in state["optimizer_scalars"].items():
            opt_state.setdefault(int(pid), {}).update(values)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        random.setstate(_tupled(state["python_random"]))
        self.step = int(state["step"])
        self.tokens = state.get("tokens")
        return dict(state)

    def save_model(self, directory: Path) -> list[Path]:
        """A Hugging Face model directory (safetensors weights, config, tokenizer); for LoRA,
        the adapter directory (or with ``merge``, the merged model's)."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora is not None:
            lora.save(self.model, self.tokenizer, self.lora, self.spec.task, self.labels, directory)
        else:
            self.model.save_pretrained(str(directory), safe_serialization=True)
            self.tokenizer.save_pretrained(str(directory))
        return sorted(p for p in directory.rglob("*") if p.is_file())


def _optimizer(model: Any, learning_rate: float, weight_decay: float) -> Any:
    """AdamW with weight decay on the weight matrices only (not on biases and norms)."""
    import torch

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
    )


def _load(
    spec: FinetuneSpec, model_dir: Path, labels: list[str], label_ids: dict[str, int], device: Any
) -> tuple[Any, Any]:
    """The tokenizer and the model to train: the task's class (``hf.model_class``); for
    classify, a head sized to ``labels``."""
    import transformers

    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
    if spec.lora is not None:
        kwargs.update(lora.load_kwargs(spec.lora, device))
    if spec.task in ("classify", "image_classify"):
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label_ids,
            ignore_mismatched_sizes=True,
        )
    model_class = hf.model_class(spec.task)
    hf.check_config_fits_weights(model_dir, model_class, spec.base_model)
    try:
        preprocessor = (
            transformers.AutoImageProcessor
            if spec.task in IMAGE_TASKS
            else transformers.AutoTokenizer
        )
        tokenizer = preprocessor.from_pretrained(str(model_dir), local_files_only=True)
        model = model_class.from_pretrained(str(model_dir), **kwargs)
    except Exception as exc:
        raise PermanentJobError(
            f"cannot load base model {spec.base_model} for task {spec.task!r}: {exc}"
        ) from exc
    if spec.task in ("classify", "image_classify"):
        model.config.problem_type = "single_label_classification"
    return tokenizer, model


def completion_tokens(
    tokenizer: Any, eos: int | None, prompt: str, completion: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion (+ end of sequence) and their labels: the prompt's are
    IGNORE, so only the completion carries loss. Truncation keeps at least half of
    ``max_length`` (or the whole completion, if shorter) for the completion."""
    p = list(tokenizer(prompt)["input_ids"])
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if eos is not None:
        c.append(eos)
    keep_c = min(len(c), max(max_length - len(p), max(1, max_length // 2)))
    c = c[:keep_c]
    p = p[: max_length - len(c)]
    return p + c, [IGNORE] * len(p) + c


def chat_tokens(
    tokenizer: Any, eos: int | None, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation rendered with the chat template, and their labels: only
    the assistant messages' tokens (each followed by the end of sequence) carry loss, never a
    system or user token. Each turn is rendered as inference renders a prompt (the template up
    to the assistant's turn, tokenized without special tokens added) and the assistant's text
    is what the full template adds after it. Longer conversations are cut at ``max_length``."""
    if not chat.has_template(tokenizer):
        raise PermanentJobError(
            "chat training records need a base model with a chat template (chat_template.jinja)"
        )
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = chat.render(tokenizer, messages[:i])
        full = str(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        answer = full[len(prompt) :] if full.startswith(prompt) else message["content"]
        context = prompt[len(done) :] if prompt.startswith(done) else prompt
        context_ids = list(tokenizer(context, add_special_tokens=False)["input_ids"])
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if eos is not None:
            answer_ids.append(eos)
        ids += context_ids + answer_ids
        labels += [IGNORE] * len(context_ids) + answer_ids
        done = full
    return ids[:max_length], labels[:max_length]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
