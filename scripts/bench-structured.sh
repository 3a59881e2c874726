#!/usr/bin/env bash
# Decoding speed with and without a JSON schema (docs/benchmarks.md, "Constrained decoding").
#   scripts/bench-structured.sh MODEL.gguf [ROUNDS] [THREADS] [TOKENS]
# Runs internvl-run on a text prompt, alternating free and schema-constrained answers (A B A B ...), and
# prints decode tokens/s of each run, the schema's compile time, and the median ratio. The schema has
# one long string field so that constrained answers run as long as free ones (-n tokens).
set -euo pipefail
model=${1:?usage: scripts/bench-structured.sh MODEL.gguf [ROUNDS] [THREADS] [TOKENS]}
rounds=${2:-3}
threads=${3:-2}
tokens=${4:-64}
exe=${EXE:-target/release/internvl-run}
schema='{"type":"object","properties":{"object":{"enum":["cup","bottle","box"]},"graspable":{"type":"boolean"},"description":{"type":"string"}},"required":["object","graspable","description"],"additionalProperties":false}'
run() {
    "$exe" -m "$model" -t "$threads" -n "$tokens" --temp 0 --json --no-progress \
        -p "Describe the object on the table." "$@"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
free_tps=() ; schema_tps=()
for r in $(seq "$rounds"); do
    a=$(run | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["decode_tok_s"], j["tokens"]["generated"])')
    b=$(run --json-schema "$schema" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["decode_tok_s"], j["tokens"]["generated"], j["timings_ms"]["constraint_compile"], j["complete"])')
    echo "round $r: free tok/s, tokens: $a | schema tok/s, tokens, compile ms, complete: $b"
    free_tps+=("${a%% *}") ; schema_tps+=("${b%% *}")
done
python3 - "${free_tps[*]}" "${schema_tps[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
print("median free %.2f tok/s, schema %.2f tok/s, ratio schema/free %.3f" % (
    statistics.median(a), statistics.median(b), statistics.median(b) / statistics.median(a)))
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
