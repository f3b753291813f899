"""The console in a real browser: headless Chromium (Debian's, through selenium and its
chromedriver; nothing is downloaded) against a real `barge api` process and the session's
real worker, running real jobs.

A member signs in, finds its job in the list, opens its page and sees the progress reach
100 % without the page reloading; the throughput chart has a point per progress sample and
the shard timeline a bar per shard attempt (read from the DOM: data-points, data-bars, the
bars themselves); cancel from the page cancels a job; another tenant's job is a 404 page; a
form without its CSRF token is refused; the session cookie is HttpOnly, SameSite=Strict and
scoped to /ui. A fine-tune's page shows its loss curve with a point per logged step.

With BARGE_CONSOLE_SCREENSHOTS=<dir> the job and fine-tune pages are saved there as PNGs
(scripts/console_screenshots.py makes the docs' images so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import new_key
from tests.helpers import (
    finetune_spec,
    inference_spec,
    put_jsonl,
    topic_examples,
    wait_until,
)
from tests.services import ROOT, free_port, wait_port

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET = "console-test-secret-" + "x" * 24
SHOTS = os.environ.get("BARGE_CONSOLE_SCREENSHOTS")
WORDS = ["barge", "river", "cargo", "tide", "harbour", "lock", "quay", "crane", "ship", "dock"]


@pytest.fixture(scope="module")
def console_url(barge_env: dict[str, str], tmp_root: Path) -> Iterator[str]:
    """A real `barge api` process with the console on (its secret set)."""
    port = free_port()
    log = tmp_root / "console-api.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env={**os.environ, **barge_env, "BARGE_CONSOLE_SECRET": SECRET},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module. Chromium missing is a failure saying how to
    install it (`make test` checks for it first), never a skip."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            f"the console's browser tests need {CHROMIUM} and {CHROMEDRIVER}: "
            "apt-get install -y chromium chromium-driver"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager downloads nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="barge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2200",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def sign_in(driver: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{url}/ui/")
    assert "/ui/login" in driver.current_url
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "sign-in").click()
    wait_until(lambda: driver.current_url.endswith("/ui/jobs"), 20, what="the jobs list")


def submit(url: str, key: str, spec: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def job(url: str, key: str, job_id: str, part: str = "") -> Any:
    answer = httpx.get(f"{url}/v1/jobs/{job_id}{part}", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def text_of(driver: Any, element_id: str) -> str:
    """The element's text; "" while the page that has it is not there (yet)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.ID, element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def samples_of(database_url: str, job_id: str) -> int:
    from db.models import JobSample
    from db.session import session_scope

    with session_scope(database_url) as session:
        query = select(func.count()).where(JobSample.job_id == uuid.UUID(job_id))
        return int(session.scalar(query) or 0)


def screenshot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


def records(n: int, words: int = 40) -> list[dict[str, Any]]:
    """Texts long enough that MiniLM takes a moment over them on a CPU."""
    return [
        {"id": i, "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))}
        for i in range(n)
    ]


# The watched job: shards of SHARD records. Screenshots want a longer job (more samples).
SHARDS, SHARD = (6, 300) if SHOTS else (6, 40)


@pytest.fixture(scope="module")
def member(database_url: str) -> str:
    return new_key(database_url, f"console-{uuid.uuid4().hex[:8]}")


def running_shards(url: str, key: str, job_id: str) -> int:
    shards = job(url, key, job_id, "/shards")["shards"]
    return sum(1 for s in shards if s["status"] == "running")


def test_a_job_watched_live_while_another_is_cancelled_from_its_page(
    browser: Any,
    console_url: str,
    member: str,
    database_url: str,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
) -> None:
    """The worker runs one shard at a time: a long one-shard job holds it, so the watched job
    waits at 0 % with its page open; cancelling the long one from its own page (in a second
    tab) lets the watched job run, and its page, never reloaded, follows it to 100 %."""

    sign_in(browser, console_url, member)
    long = put_jsonl(s3, bucket, "console/long.jsonl", records(5000, words=5))
    blocker = submit(
        console_url,
        member,
        inference_spec(minilm_uri, long, f"s3://{bucket}/console/long/", batch_size=2),
    )
    wait_until(lambda: running_shards(console_url, member, blocker), 120, what="blocker runs")
    try:
        watch(browser, console_url, member, database_url, s3, bucket, minilm_uri, blocker)
    finally:  # never leave the long job holding the worker for the tests after this one
        cancel(console_url, member, blocker)


def cancel(url: str, key: str, job_id: str) -> None:
    httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"})


def watch(
    browser: Any,
    console_url: str,
    member: str,
    database_url: str,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    blocker: str,
) -> None:
    from selenium.webdriver.common.by import By

    data = put_jsonl(s3, bucket, "console/in.jsonl", records(SHARDS * SHARD, words=30))
    tag = f"watch-{uuid.uuid4().hex[:6]}"
    spec = inference_spec(
        minilm_uri, data, f"s3://{bucket}/console/out/", shard_size=SHARD, metadata={"run": tag}
    )
    job_id = submit(console_url, member, spec)
    browser.get(f"{console_url}/ui/jobs?q={tag}")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job")
    assert [r.get_attribute("data-job-id") for r in rows] == [job_id]
    rows[0].find_element(By.CSS_SELECTOR, "a.job-link").click()
    wait_until(lambda: browser.current_url.endswith(f"/ui/jobs/{job_id}"), 20, what="job page")
    browser.execute_script("window.bargeProbe = 'same page'")  # gone if the page reloads
    assert text_of(browser, "job-percent") in ("—", "0 %")
    watched = browser.current_window_handle

    cancel_from_its_page(browser, console_url, member, blocker)

    browser.switch_to.window(watched)
    wait_until(lambda: text_of(browser, "job-status") == "succeeded", 300, 0.5, "succeeded")
    wait_until(lambda: text_of(browser, "job-percent") == "100 %", 30, what="100 %")
    assert browser.execute_script("return window.bargeProbe") == "same page"

    throughput = browser.find_element(By.ID, "throughput")
    samples = samples_of(database_url, job_id)
    wait_until(
        lambda: int(throughput.get_attribute("data-points")) >= samples >= 1, 15, what="points"
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#samples-table tr.sample")) == samples
    assert throughput.find_elements(By.CSS_SELECTOR, "canvas"), "uPlot drew nothing"

    shards = job(console_url, member, job_id, "/shards")["shards"]
    attempts = sum(s["attempt"] for s in shards)
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-bar")
    assert len(shards) == SHARDS and len(bars) == attempts >= SHARDS
    assert {b.get_attribute("data-outcome") for b in bars} == {"succeeded"}
    assert {int(b.get_attribute("data-shard")) for b in bars} == set(range(SHARDS))
    assert text_of(browser, "records-done") == f"{SHARDS * SHARD:,}"
    assert text_of(browser, "usage-attempts").startswith(str(attempts))
    screenshot(browser, "console-job.png")
    retry_from_its_page(browser, console_url, member, blocker)


def retry_from_its_page(browser: Any, url: str, key: str, job_id: str) -> None:
    """A cancelled job's Retry submits it again as a new job writing beside it."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/ui/jobs/{job_id}")
    assert browser.find_element(By.ID, "cancel-form").get_attribute("hidden") is not None
    browser.find_element(By.ID, "retry").click()
    wait_until(lambda: text_of(browser, "job-id") != job_id, 30, what="the new job's page")
    again = text_of(browser, "job-id")
    first, second = job(url, key, job_id), job(url, key, again)
    cancel(url, key, again)
    assert second["metadata"]["retry_of"] == job_id
    beside = first["spec"]["output"].rstrip("/") + "-retry-"
    assert second["spec"]["output"].startswith(beside), second["spec"]["output"]
    assert {k: v for k, v in second["spec"].items() if k not in ("output", "metadata")} == {
        k: v for k, v in first["spec"].items() if k not in ("output", "metadata")
    }


def cancel_from_its_page(browser: Any, url: str, key: str, job_id: str) -> None:
    """In a second tab: a cancel without its CSRF token is refused; with it, the job stops."""
    from selenium.webdriver.common.by import By

    browser.switch_to.new_window("tab")
    browser.get(f"{url}/ui/jobs/{job_id}")
    browser.execute_script("document.querySelector('#cancel-form input[name=csrf]').remove()")
    browser.find_element(By.ID, "cancel").click()
    wait_until(lambda: text_of(browser, "error-status") == "403", 20, what="the 403 page")
    assert "CSRF" in text_of(browser, "error-message")
    assert job(url, key, job_id)["status"] == "running"

    browser.get(f"{url}/ui/jobs/{job_id}")
    browser.find_element(By.ID, "cancel").click()
    wait_until(lambda: job(url, key, job_id)["status"] == "cancelled", 120, what="cancelled")
    wait_until(lambda: text_of(browser, "job-status") == "cancelled", 30, what="its page says so")


def test_the_session_cookie_and_another_tenants_job(
    browser: Any, console_url: str, member: str, database_url: str
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, console_url, member)
    cookie = browser.get_cookie("barge_console")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert member not in cookie["value"] and member.split("_", 1)[1][:16] not in cookie["value"]
    assert "barge_console" not in browser.execute_script("return document.cookie")

    # the shared worker's processes noted themselves: its GPU queue, running nothing of ours
    browser.get(f"{console_url}/ui/workers")
    queues = [
        r.find_elements(By.TAG_NAME, "td")[1].text
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.worker")
    ]
    assert any("gpu" in q for q in queues) and any("control" in q for q in queues), queues

    theirs = finished_job_of_another_tenant(database_url)
    browser.get(f"{console_url}/ui/jobs/{theirs}")
    assert text_of(browser, "error-status") == "404"
    browser.get(f"{console_url}/ui/jobs/{theirs}/live")
    assert '"error":"not_found"' in browser.page_source.replace(" ", "")

    # signing out is a form too: without its token it is refused, with it the session ends
    browser.get(f"{console_url}/ui/jobs")
    browser.execute_script("document.querySelector('.who input[name=csrf]').remove()")
    browser.find_element(By.ID, "sign-out").click()
    wait_until(lambda: text_of(browser, "error-status") == "403", 20, what="the 403 page")
    browser.get(f"{console_url}/ui/jobs")
    browser.find_element(By.ID, "sign-out").click()
    wait_until(lambda: "/ui/login" in browser.current_url, 20, what="the sign-in page")
    browser.get(f"{console_url}/ui/jobs")
    assert "/ui/login" in browser.current_url


def test_retry_failed_records_from_a_jobs_page(
    browser: Any, console_url: str, member: str, s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    """A job that succeeded with some records failed offers "Retry failed records" (and not
    "Run again", which is for failed and cancelled jobs); it makes a child job over exactly
    those records and opens its page."""
    from selenium.webdriver.common.by import By

    sign_in(browser, console_url, member)
    rows: list[dict[str, Any]] = records(30, words=5)
    for row in rows[5::10]:
        row["text"] = 12345  # records 5, 15 and 25 fail: a number is no text to embed
    data = put_jsonl(s3, bucket, "console/some-bad.jsonl", rows)
    out = f"s3://{bucket}/console/some-bad/"
    job_id = submit(console_url, member, inference_spec(minilm_uri, data, out, id_field="id"))
    wait_until(lambda: job(console_url, member, job_id)["status"] == "succeeded", 120, what="done")

    browser.get(f"{console_url}/ui/jobs/{job_id}")
    assert browser.find_element(By.ID, "retry-failed-form").get_attribute("hidden") is None
    assert browser.find_element(By.ID, "retry-form").get_attribute("hidden") is not None
    browser.find_element(By.ID, "retry-failed").click()
    wait_until(lambda: text_of(browser, "job-id") not in ("", job_id), 30, what="the retry's page")
    child_id = text_of(browser, "job-id")
    child = job(console_url, member, child_id)
    assert (child["retries"]["parent"], child["retries"]["retry"]) == (job_id, 1)
    assert child["spec"]["input"] == f"{out}retry-1.input.jsonl"
    wait_until(lambda: job(console_url, member, child_id)["status"] != "queued", 60, what="plan")
    wait_until(
        lambda: job(console_url, member, child_id)["progress"]["records_total"] == 3,
        60,
        what="the retry planned over the three failed records",
    )


def finished_job_of_another_tenant(database_url: str) -> str:
    from db.session import session_scope
    from tests.factories import make_job, make_tenant

    with session_scope(database_url) as session:
        return str(make_job(session, make_tenant(session), status="succeeded").id)


def test_a_finetune_page_shows_its_loss_curve(
    browser: Any,
    console_url: str,
    member: str,
    s3: Any,
    bucket: str,
    encoder_uri: str,
    worker: Any,
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, console_url, member)
    train = put_jsonl(s3, bucket, "ft/train.jsonl", topic_examples(120, seed=1))
    validation = put_jsonl(s3, bucket, "ft/val.jsonl", topic_examples(30, seed=2))
    spec = finetune_spec(
        encoder_uri,
        train,
        f"topics-{uuid.uuid4().hex[:6]}",
        validation=validation,
        output=f"s3://{bucket}/ft/out/",
        hyperparameters={"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "seed": 0},
        log_every_steps=3,
        checkpoint_every_steps=15,
    )
    job_id = submit(console_url, member, spec)
    browser.get(f"{console_url}/ui/jobs/{job_id}")
    wait_until(lambda: text_of(browser, "job-status") == "succeeded", 300, 0.5, "succeeded")

    logged = [e for e in events_of(console_url, member, job_id) if e["kind"] == "train"]
    loss = browser.find_element(By.ID, "loss-chart")
    wait_until(lambda: int(loss.get_attribute("data-points")) == len(logged) > 5, 15, what="loss")
    assert loss.find_elements(By.CSS_SELECTOR, "canvas")
    matrix = browser.find_elements(By.CSS_SELECTOR, "#confusion-table tbody tr")
    assert len(matrix) == 3  # the three topics
    assert len(browser.find_elements(By.CSS_SELECTOR, "#epochs-table tbody tr")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "#checkpoints li")
    assert "Registered" in text_of(browser, "finetune-outputs")
    screenshot(browser, "console-finetune.png")

    browser.find_element(By.CSS_SELECTOR, "p.registered a").click()
    wait_until(lambda: "/ui/models" in browser.current_url, 20, what="the models page")
    versions = browser.find_elements(By.CSS_SELECTOR, f"section[id='{spec['model_name']}'] tr")
    assert len(versions) == 2  # its header and version 1


def events_of(url: str, key: str, job_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{url}/v1/jobs/{job_id}/events",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {key}"},
    )
    return list(answer.json()["events"])
