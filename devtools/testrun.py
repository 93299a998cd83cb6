"""`make test`: start embedded Postgres and Valkey for the tests (their own data dir
and ports, apart from the dev services), run pytest, stop them, exit with pytest's
code. When DATABASE_URL and REDIS_URL are already set, those servers are used and
nothing is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools import embedded

ROOT = Path(__file__).resolve().parent.parent
TEST_DATADIR = ROOT / ".devdata" / "test"


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    started = False
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        services = embedded.start(
            TEST_DATADIR,
            pg_port=int(env.get("AIP_TEST_PG_PORT", "54339")),
            redis_port=int(env.get("AIP_TEST_REDIS_PORT", "63809")),
            dbname="aiplatform",
        )
        env["DATABASE_URL"] = services.database_url
        env["REDIS_URL"] = services.redis_url
        started = True
    env["DJANGO_SETTINGS_MODULE"] = "aiplatform.settings.test"
    try:
        return subprocess.call([sys.executable, "-m", "pytest", *argv], env=env, cwd=ROOT)
    finally:
        if started and env.get("AIP_KEEP_TEST_SERVICES") != "1":
            embedded.stop(TEST_DATADIR)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
