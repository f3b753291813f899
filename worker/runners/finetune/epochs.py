"""The models of a fine-tune's last epochs (``epoch_models``), kept besides the model it
registers, so that an earlier epoch can be served and compared: each is saved when its epoch
ends (the model as ``Trainer.save_model`` writes it: an adapter for LoRA, a full directory
otherwise), uploaded in the background, and registered with the job's model as
``<model_name>-ckpt-step-<step>``.

Layout under the job's prefix::

    epochs/epoch-0003/{...model files..., epoch.json}   # epoch.json is written last

Only an epoch directory whose ``epoch.json`` names this job and that epoch counts, and only the
newest ``epoch_models`` epochs other than the registered one are kept (a folder another writer
marked is neither registered nor deleted). A resumed run saves the epochs it trains again
over what an earlier attempt wrote (the same weights: training resumes exactly), and an attempt
that lost its lease writes no ``epoch.json``.

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.runners.finetune.training``;
never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barge.specs import MODEL_NAME_MAX, FinetuneSpec
from barge.storage import S3Uri
from worker.context import WorkerContext
from worker.lease import Lease, ShardWork
from worker.runners.finetune.training import Trainer

EPOCHS = "epochs/"
MARKER = "epoch.json"


def checkpoint_name(model_name: str, step: int) -> str:
    """The registry name of the model of the epoch that ended at ``step``."""
    suffix = f"-ckpt-step-{step}"
    return model_name[: MODEL_NAME_MAX - len(suffix)] + suffix


@dataclass(frozen=True)
class EpochModel:
    """A kept epoch model: its epoch, the step it ended at, its metrics and where it is."""

    epoch: int
    step: int
    record: dict[str, Any]
    uri: S3Uri


class EpochModels:
    """Saves the models of the epochs that may be among the last ``spec.epoch_models`` before
    the end, and lists the kept ones at the end."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, lease: Lease, tmp: Path) -> None:
        spec = work.spec
        assert isinstance(spec, FinetuneSpec)
        self.ctx = ctx
        self.job_id = str(work.job_id)
        self.spec = spec
        self.lease = lease
        self.keep = spec.epoch_models
        self.tmp = tmp
        self.out = S3Uri.parse(work.output_uri).as_prefix().join(EPOCHS)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def due(self, epoch: int, final: bool) -> bool:
        """Whether the model of ``epoch`` may be kept: not the last epoch when the last is what
        gets registered, and, unless early stopping may end training sooner, one of the last
        ``keep`` + 1 planned epochs (select best may register any one of them)."""
        if self.keep == 0 or (final and self.spec.select == "last"):
            return False
        if self.spec.early_stopping_epochs is not None:
            return True
        return epoch > self.spec.hyperparameters.epochs - self.keep - 1

    def save(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Write the model of the epoch that just ended (``record``: its history entry) and
        upload it in the background (one upload at a time; the previous one is waited for)."""
        self.wait()
        epoch = int(record["epoch"])
        directory = self.tmp / f"epoch-{epoch:04d}"
        files = trainer.save_model(directory)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="barge-epoch-model")
        self._pending = self._executor.submit(self._upload, epoch, directory, files, record)

    def _upload(
        self, epoch: int, directory: Path, files: list[Path], record: dict[str, Any]
    ) -> None:
        prefix = self.out.join(f"epoch-{epoch:04d}/")
        for path in files:
            self.ctx.store.put_file(prefix.join(path.relative_to(directory).as_posix()), path)
        self.lease.fence()  # an attempt that lost its lease never marks an epoch complete
        marker = {"job_id": self.job_id, "epoch": epoch, "record": record}
        self.ctx.store.put_bytes(prefix.join(MARKER), json.dumps(marker).encode())
        shutil.rmtree(directory, ignore_errors=True)

    def wait(self) -> None:
        """Block until the upload under way (if any) is done; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def kept(self, registered_epoch: int | None) -> list[EpochModel]:
        """The complete epoch models to register, newest first: the ``keep`` newest other
        than ``registered_epoch``; the others are deleted."""
        self.wait()
        if self.keep == 0:
            return []
        found: dict[int, EpochModel] = {}
        foreign: set[int] = set()
        folders: dict[int, list[S3Uri]] = {}
        for info in self.ctx.store.list(self.out):
            folder, _, name = info.uri.key[len(self.out.key) :].partition("/")
            if not (folder.startswith("epoch-") and folder[6:].isdigit()):
                continue
            epoch = int(folder[6:])
            folders.setdefault(epoch, []).append(info.uri)
            if name == MARKER:
                model = self._read_marker(info.uri, epoch)
                if model is None:
                    foreign.add(epoch)
                else:
                    found[epoch] = model
        chosen = sorted((e for e in found if e != registered_epoch), reverse=True)[: self.keep]
        for epoch, uris in folders.items():
            if epoch not in chosen and epoch not in foreign:
                for uri in uris:
                    self.ctx.store.delete(uri)
        return [found[e] for e in chosen]

    def _read_marker(self, uri: S3Uri, epoch: int) -> EpochModel | None:
        """The epoch model an ``epoch.json`` of this job marks complete; None for one this job
        did not write."""
        try:
            marker = json.loads(self.ctx.store.get_bytes(uri))
            record = marker["record"]
            ours = (
                marker["job_id"] == self.job_id
                and marker["epoch"] == epoch == record["epoch"]
                and isinstance(record["step"], int)
            )
        except (ValueError, KeyError, TypeError):
            return None
        if not ours:
            return None
        return EpochModel(epoch, record["step"], record, self.out.join(f"epoch-{epoch:04d}/"))
