#!/usr/bin/env bash
# bora routes against bora perplexity on the same text and model (the bench model's Q4_K_M
# GGUF by default): tokens/s of each, interleaved ABBA, the better of each counting; and the
# peak RSS of a routes run beside the model file's size.
# Usage: benches/routes.sh [MODEL]   env: TOKENS (text length in tokens, about; default 1000000),
#   ONLY_ROUTES=1 (one routes run: its tokens/s and peak RSS; perplexity at a million tokens takes
#   hours here), REPORT=DIR (the routes run also writes its report into DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-.cache/bench-model/mixtral-Q4_K_M.gguf}
[ -f "$model" ] || { echo "no $model: run benches/gguf.sh first" >&2; exit 1; }
cargo build --release -q -p bora-cli
bin=target/release/bora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A text of words drawn from the repository's own prose, about TOKENS tokens long.
python3 - "$work/text.txt" "${TOKENS:-1000000}" <<'PY'
import pathlib, random, re, sys
words = re.findall(r"[A-Za-z]+[,.;:]?", " ".join(p.read_text(errors="ignore")
                   for p in pathlib.Path(".").glob("*.md")))
rng = random.Random(7)
out, n = [], 0
while n < int(sys.argv[2]) / 1.3:  # about 1.3 tokens a word (916,483 of 700,000 words)
    out.append(rng.choice(words)); n += 1
pathlib.Path(sys.argv[1]).write_text(" ".join(out))
PY
echo "text: $(wc -c < "$work/text.txt") bytes; model $(stat -c %s "$model") bytes"
run() { # kind -> "seconds peak_kib"
  local start end
  start=$(date +%s.%N)
  if [ "$1" = routes ]; then
    /usr/bin/time -f "%M" -o "$work/rss" "$bin" routes --model "$model" --file "$work/text.txt" \
      --out "$work/trace.parquet" ${REPORT:+--report "$REPORT"} > "$work/routes.out" 2>&1
  else
    # The same windows as routes' (2,048 tokens; perplexity's default is the model's context).
    /usr/bin/time -f "%M" -o "$work/rss" "$bin" perplexity --model "$model" --file "$work/text.txt" \
      --ctx 2048 > /dev/null 2>&1
  fi
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc) $(tail -1 "$work/rss")"
}
kinds="routes perplexity perplexity routes"
[ -n "${ONLY_ROUTES:-}" ] && kinds=routes
for kind in $kinds; do
  read -r secs rss <<< "$(run "$kind")"
  echo "$kind $secs s, peak RSS $((rss / 1024)) MiB" | tee -a "$work/runs"
done
grep -E "tokens of" "$work/routes.out"
echo "trace: $(stat -c %s "$work/trace.parquet") bytes of Parquet"
python3 - "$work/runs" "$(stat -c %s "$model")" "$(grep -oE '^[0-9]+ tokens' "$work/routes.out" | cut -d' ' -f1)" <<'PY'
import sys
runs = [l.split() for l in open(sys.argv[1])]
best = {}
rss = {}
for r in runs:
    kind, secs, mib = r[0], float(r[1]), int(r[5])
    best[kind] = min(best.get(kind, 1e18), secs)
    rss[kind] = max(rss.get(kind, 0), mib)
size = int(sys.argv[2]) / 2**20
tokens = int(sys.argv[3])
print(f"routes: {tokens} tokens in {best['routes']:.1f} s, {tokens / best['routes']:.0f} tokens/s")
if "perplexity" in best:
    print(f"best wall time: routes {best['routes']:.1f} s, perplexity {best['perplexity']:.1f} s; "
          f"routes / perplexity tokens/s = {best['perplexity'] / best['routes']:.2f}x")
    print(f"peak RSS of perplexity: {rss['perplexity']} MiB")
print(f"peak RSS: routes {rss['routes']} MiB, model file {size:.0f} MiB: "
      f"routes / model = {rss['routes'] / size:.3f}x")
PY
