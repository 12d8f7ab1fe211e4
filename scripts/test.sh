#!/usr/bin/env bash
# The project's test command: sets the node up (scripts/setup.sh), then lint, format check, type check
# and pytest. Arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`. Exits non-zero on any
# failure, including pytest collecting no test (its exit code 5). pytest runs on 4 xdist workers:
# most tests wait on containers and timers, not on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
PATH=$PWD/.venv/bin:$PATH

echo "[test] ruff check"
ruff check .
echo "[test] ruff format --check"
ruff format --check .

typed=()
for target in mao_celery cli.py beat_schedule.py tests bench; do
  [[ -e $target ]] && typed+=("$target")
done
if ((${#typed[@]})); then
  echo "[test] mypy ${typed[*]}"
  mypy "${typed[@]}"
fi

echo "[test] pytest"
status=0
pytest -p no:cacheprovider -n 4 --dist loadgroup "$@" || status=$?
if ((status == 5)); then
  echo "[test] ERROR: pytest collected no test" >&2
fi
exit "$status"
