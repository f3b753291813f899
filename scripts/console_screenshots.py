"""Take the docs' screenshots of the console (docs/images/console-job.png and
console-finetune.png) by running its browser test with screenshots on: a real stack (the test
fixtures: Postgres, RabbitMQ, moto's S3 server, a real API and worker), real jobs, headless
Chromium. Samples are taken every second and the watched job is longer, so the charts have
something to show. The PNGs are committed once made; CI never writes them.

    .venv/bin/python scripts/console_screenshots.py [out-dir]   (default: docs/images)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "images").resolve()
    env = {**os.environ, "BARGE_CONSOLE_SCREENSHOTS": str(out), "BARGE_SAMPLE_SECONDS": "1"}
    test = "tests/e2e/test_console.py"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-k", "watched or finetune"],
        cwd=ROOT,
        env=env,
        check=False,
    )
    for name in ("console-job.png", "console-finetune.png"):
        shot = out / name
        print(f"{shot}: {'written' if shot.exists() else 'MISSING'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
