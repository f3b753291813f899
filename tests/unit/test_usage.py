"""Usage accounting (``worker.usage``) against a fake counter source: the NVML reader is the
only thing faked. Energy is the counter's difference on each device, in joules; a device
without a counter, or a counter that went back, has no figure (never an estimate), and the
total is given only when every device measured its part. On a machine with an NVIDIA GPU the
real reader is checked too (skipped elsewhere)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

from barge.settings import Settings
from worker import coldstart, metrics, usage
from worker.usage import Device, Reading, account, read

GPU0 = Device("cuda:0", "NVIDIA H100 80GB HBM3", "GPU-aaaa")
GPU1 = Device("cuda:1", "NVIDIA H100 80GB HBM3", "GPU-bbbb")
CPU = Device("cpu", "cpu")


@dataclass
class FakeCounters:
    """Millijoule counters by device id, moved on by hand; a device missing has none."""

    mj: dict[str, int | None] = field(default_factory=dict)

    def energy_millijoules(self, device: Device) -> int | None:
        return self.mj.get(device.id)


def reading(wall: float, cpu: float, busy: float, batches: int, *mj: int | None) -> Reading:
    return Reading(wall=wall, cpu=cpu, busy=busy, batches=batches, energy_mj=tuple(mj))


def test_energy_is_the_counters_difference_in_joules_summed_over_the_gpus() -> None:
    start = reading(100.0, 5.0, 2.0, 10, 1_000_000, 2_000_000)
    end = reading(110.5, 12.5, 9.0, 20, 1_250_500, 2_300_000)

    used = account([GPU0, GPU1], start, end, {"prompt_tokens": 30, "completion_tokens": 70})

    assert used["devices"] == [
        {"device": "cuda:0", "name": GPU0.name, "energy_joules": 250.5},
        {"device": "cuda:1", "name": GPU1.name, "energy_joules": 300.0},
    ]
    assert used["energy_joules"] == 550.5
    assert (used["wall_seconds"], used["cpu_seconds"], used["busy_seconds"]) == (10.5, 7.5, 7.0)
    assert (used["gpus"], used["gpu_seconds"]) == (2, 21.0)
    assert (used["device"], used["device_name"]) == ("cuda:0,cuda:1", GPU0.name)
    assert (used["tokens_in"], used["tokens_out"]) == (30, 70)


def test_a_device_without_a_counter_has_no_figure_and_no_total_is_made_up() -> None:
    used = account([GPU0, GPU1], reading(0, 0, 0, 0, 5_000, None), reading(1, 0, 0, 0, 9_000, None))
    assert [d["energy_joules"] for d in used["devices"]] == [4.0, None]
    assert used["energy_joules"] is None  # one GPU measured its part: a partial sum would mislead

    cpu = account([CPU], reading(0, 1, 0, 0, None), reading(3, 2, 0, 0, None))
    assert (cpu["energy_joules"], cpu["gpus"], cpu["gpu_seconds"]) == (None, 0, 0.0)
    assert cpu["devices"] == [{"device": "cpu", "name": "cpu", "energy_joules": None}]


def test_a_counter_that_went_back_is_no_figure() -> None:
    """The driver reloaded between the readings: its counter started again from zero."""
    used = account([GPU0], reading(0, 0, 0, 0, 9_000_000), reading(60, 0, 0, 0, 1_000))
    assert used["energy_joules"] is None


def test_busy_seconds_only_where_model_batches_were_timed() -> None:
    untimed = account([CPU], reading(0, 0, 4.0, 7, None), reading(5, 0, 4.0, 7, None))
    assert untimed["busy_seconds"] is None  # a fine-tune's steps, or a shard that ran no batch
    timed = account([CPU], reading(0, 0, 4.0, 7, None), reading(5, 0, 6.5, 9, None))
    assert timed["busy_seconds"] == 2.5


def test_load_seconds_are_the_cold_start_between_the_readings_never_above_the_wall() -> None:
    start = Reading(wall=10.0, cpu=0, busy=0, batches=0, energy_mj=(None,), cold=2.0)
    loaded = Reading(wall=16.0, cpu=0, busy=0, batches=0, energy_mj=(None,), cold=6.5)
    assert account([CPU], start, loaded)["load_seconds"] == 4.5
    warm = Reading(wall=16.0, cpu=0, busy=0, batches=0, energy_mj=(None,), cold=2.0)
    assert account([CPU], start, warm)["load_seconds"] == 0.0
    # a cold start longer than the attempt (a reading taken mid-load) counts the attempt only
    assert account([CPU], start, Reading(11.0, 0, 0, 0, (None,), cold=9.0))["load_seconds"] == 1.0


def test_read_takes_each_devices_counter_and_the_process_figures() -> None:
    counters = FakeCounters({"cuda:0": 7_000, "cuda:1": None})
    before = metrics.busy_seconds(), metrics.batches_observed()
    cold = coldstart.seconds()
    metrics.note_busy(0.25)
    coldstart.note(1.5)
    now = read([GPU0, GPU1], counters)
    assert now.cold == pytest.approx(cold + 1.5)
    assert now.energy_mj == (7_000, None)
    assert now.busy == pytest.approx(before[0] + 0.25) and now.batches == before[1] + 1
    assert now.cpu > 0 and now.wall <= time.monotonic()


def test_a_cpu_worker_measures_no_energy() -> None:
    devices, counters = usage.find_devices(Settings(env="test", device="cpu"))
    assert devices == [CPU]
    assert counters.energy_millijoules(CPU) is None


def nvml_gpu() -> tuple[usage.NvmlCounters, Device] | None:
    """This machine's first GPU and its NVML reader, or None without either."""
    devices, counters = usage.find_devices(Settings(env="test"))
    if isinstance(counters, usage.NvmlCounters) and devices[0].kind == "cuda":
        return counters, devices[0]
    return None


# bench/gpu_check.sh sets BARGE_REQUIRE_GPU=1: there, no GPU is a failure, not a skip.
needs_gpu = pytest.mark.skipif(
    nvml_gpu() is None and not os.environ.get("BARGE_REQUIRE_GPU"),
    reason="needs an NVIDIA GPU with NVML (bench/gpu_check.sh runs it on one)",
)


@needs_gpu
def test_the_nvml_counter_of_this_gpu_moves_and_stays_below_its_power_limit() -> None:
    found = nvml_gpu()
    assert found is not None, "no NVIDIA GPU with NVML here"
    counters, gpu = found
    import torch

    start = read([gpu], counters)
    x = torch.randn(4096, 4096, device=gpu.id)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        x = x @ x
        x = x / x.norm()
    torch.cuda.synchronize()
    used = account([gpu], start, read([gpu], counters))
    limit = counters.power_limit_watts(gpu)
    assert used["energy_joules"] is not None and used["energy_joules"] > 0
    assert limit is not None and used["energy_joules"] < limit * used["gpu_seconds"]
