#!/bin/bash
# bench serve against `indextts-fast serve --ray` with 1 and 2 replicas of 1 thread each (tiny model), c = 1, 4, 8.
# Needs the ray extra (pip install -e ".[ray]") and ../shared/reference/tiny; results in /tmp/raybench.
# Usage: N=200 deploy/bench-ray.sh
set -u
mkdir -p /tmp/raybench
cd "$(dirname "$0")/.."
TINY=$(cd ../shared/reference/tiny && pwd)
PROMPT=$TINY/$(python3 -c "import json;print(json.load(open('$TINY/goldens/e2e.json'))['prompt']['file'])")
for R in 1 2; do
  STORE=$(mktemp -d); PORT=$((18000 + R))
  indextts-fast serve --ray --replicas $R --threads 1 --model-dir $TINY --store $STORE --port $PORT --queue-size 64 > /tmp/raybench/serve-$R.log 2>&1 &
  PID=$!
  for i in $(seq 1 120); do curl -sf 127.0.0.1:$PORT/ready >/dev/null && break; sleep 1; done
  curl -sf 127.0.0.1:$PORT/v1/audio/voices -F name=bench -F audio_sample=@$PROMPT > /dev/null || echo "register failed"
  indextts-fast bench serve --url http://127.0.0.1:$PORT --concurrency 1 4 8 --requests ${N:-200} --codes 30 --json /tmp/raybench/r$R.json > /tmp/raybench/bench-$R.log 2>&1
  kill -TERM $PID; wait $PID
  ray stop --force > /dev/null 2>&1
done
for f in /tmp/raybench/bench-1.log /tmp/raybench/bench-2.log; do echo "== $f"; tail -n 7 "$f"; done
