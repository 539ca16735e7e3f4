#!/usr/bin/env bash
# make slurm-test: `ablate slurm`'s script on a real one-node Slurm (Debian's slurm-wlm and
# munge on localhost): a three-variant sweep as a job array; task 0 is requeued mid-training
# (`scontrol requeue`: SIGTERM, a checkpoint, Slurm runs it again and it continues), task 1 is
# cancelled (`scancel`: SIGTERM, a checkpoint, pending); the summary job runs after both and
# fails (a variant is unfinished); then `ablate slurm --resume` resubmits task 1's variant into
# the same folder and its summary job shows every variant ok. The runs folder's name has a
# space (the script quotes every path).
# Needs root: it installs the packages when missing and starts munged, slurmctld and slurmd.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail() { echo "slurm-test: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs and starts munged, slurmctld, slurmd)"
if ! command -v slurmctld >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
cp "$root/tests/slurm/slurm.conf" /etc/slurm/slurm.conf
mkdir -p /var/spool/slurmd /var/spool/slurmctld /run/munge
[ -f /etc/munge/munge.key ] || mungekey -c
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld -i
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %t | grep -q idle || fail "the node did not come up: $(sinfo 2>&1)"
(cd "$root" && cargo build --release --quiet)
ablate="$root/target/release/ablate"

work=$(mktemp -d)
cd "$work"
/usr/bin/python3 - <<'PY'
import os, random
from PIL import Image
random.seed(1)
for cls, red in [("blue", False), ("red", True)]:
    os.makedirs(f"data/train/{cls}")
    for i in range(12):
        hi, lo = random.randint(150, 255), random.randint(0, 100)
        Image.new("RGB", (12, 12), (hi, 120, lo) if red else (lo, 120, hi)).save(f"data/train/{cls}/{i}.png")
os.makedirs("data/test")
for i in range(4):
    Image.new("RGB", (12, 12), (200, 100, 30)).save(f"data/test/{i + 1}.png")
PY
cat > tiny.toml <<'TOML'
name = "tiny"
seed = 7
[data]
root = "data"
val_fraction = 0.25
batch_size = 4
[transforms]
train = [{ resize = [16, 16] }, { hflip = 0.5 }]
eval = [{ resize = [16, 16] }]
[model]
params = { width = 4 }
layers = [{ conv = { out = "$width", kernel = 3, padding = 1 } }, "batch_norm", "relu", { max_pool = { kernel = 2 } }, { linear = { out = "$classes" } }]
[train]
epochs = 4000  # long enough (about 30 s a variant) to be interrupted
[sweep]
"model.params.width" = [2, 4, 6]
TOML
"$ablate" slurm tiny.toml --runs-dir "my runs" --partition debug --time 10:00 --warn-before 60 > submit.sh
out=$(bash submit.sh)
echo "$out"
array=$(sed -n 's/^submitted job array \([0-9]*\) .*/\1/p' <<<"$out")
[ -n "$array" ] || fail "no job id in: $out"
summary=$(sed -n 's/.* summary job \([0-9]*\);.*/\1/p' <<<"$out")
run="my runs/${array}_tiny"
# Both tasks training, each with an epoch committed: then requeue one and cancel the other.
for _ in $(seq 240); do
  [ -f "$run/width=2/checkpoints/CURRENT" ] && [ -f "$run/width=4/checkpoints/CURRENT" ] && break
  sleep 0.5
done
[ -n "$(squeue -h -t R -j "${array}_0")" ] && [ -n "$(squeue -h -t R -j "${array}_1")" ] ||
  fail "tasks 0 and 1 are not both training: $(squeue)"
scontrol requeue "${array}_0"
scancel "${array}_1"
echo "requeued ${array}_0, cancelled ${array}_1; waiting for the array and the summary job (the requeued task starts again after Slurm's delay)"
for _ in $(seq 300); do [ -z "$(squeue -h)" ] && break; sleep 2; done
[ -z "$(squeue -h)" ] || fail "jobs still queued after 10 minutes: $(squeue)"
grep -q "resuming after" "$run/width=2/log.txt" || fail "the requeued task did not continue its checkpoint"
grep -q "width=4 .*| pending |" "$run/summary.md" || fail "the cancelled variant is not pending: $(cat "$run/summary.md")"
grep -q "interrupted after" "my runs/slurm-${array}_1.out" || fail "the cancelled task did not stop with a checkpoint"
scontrol show job "$summary" | grep -q "JobState=FAILED" || fail "the summary job did not fail: $(scontrol show job "$summary")"
grep -q "1 not finished (width=4)" "my runs/slurm-$summary.out" || fail "the summary job did not name the unfinished variant"

"$ablate" slurm --resume "$run" --partition debug --time 10:00 > resume.sh
grep -q -- "--array=1 " resume.sh || fail "the resume script does not resubmit just task 1: $(cat resume.sh)"
out=$(bash resume.sh)
echo "$out"
summary=$(sed -n 's/.* summary job \([0-9]*\);.*/\1/p' <<<"$out")
for _ in $(seq 150); do [ -z "$(squeue -h)" ] && break; sleep 2; done
[ -z "$(squeue -h)" ] || fail "resume jobs still queued after 5 minutes: $(squeue)"
grep -q "resuming after" "$run/width=4/log.txt" || fail "the resubmitted variant did not continue its checkpoint"
scontrol show job "$summary" | grep -q "JobState=COMPLETED" || fail "the summary job failed: $(cat "my runs/slurm-$summary.out")"
cat "$run/summary.md"
[ "$(grep -c '| ok |' "$run/summary.md")" = 3 ] || fail "not every variant finished: $(cat "$run/summary.md")"
echo "slurm-test: passed (requeued task continued, cancelled task resubmitted and resumed, summary job failed then passed) in $work"
