#!/usr/bin/env bash
# The one-command demo on a fresh Debian 12 machine, as root: install the
# packages, build Tandem and its test images, run a command in a microVM,
# then bring up the whole system (`tandem up`: control plane, SQLite and
# this host's agent) against ghfake, the GitHub emulator, and watch a
# workflow job labelled tandem-arm64-1cpu-0.25gb get its own fresh VM; it
# ends with the dashboard's address (and, at a terminal, keeps running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
for arch in amd64 arm64; do
  bin/tandem image build --kind test --arch $arch
done
echo
echo '$ tandem run -- sh -c "echo hello from \$(uname -n), kernel \$(uname -r) \$(uname -m)"'
bin/tandem run -- sh -c 'echo hello from $(uname -n), kernel $(uname -r) $(uname -m)'
echo '$ tandem run --arch arm64 -- uname -m'
bin/tandem run --arch arm64 -- uname -m

# The all-in-one system. GitHub is ghfake, on a stand-in "internet": a
# network namespace behind a veth, at 198.51.100.2 (TEST-NET-2). Tandem
# reaches it directly; the fake runner in each VM only through the host's
# NAT, as a runner reaches GitHub: a VM reaches nothing of its host but the
# registry mirror and the DNS forwarder.
demo=/var/tmp/tandem-demo
rm -rf "$demo" && mkdir -p "$demo"
inet=tandem-demo-inet host=198.51.100.1 gh=198.51.100.2
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del tdmdemo0 2>/dev/null || true
  ip netns del $inet 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add $inet
ip link add tdmdemo0 type veth peer name eth0 netns $inet
ip addr add $host/24 dev tdmdemo0 && ip link set tdmdemo0 up
ip -n $inet addr add $gh/24 dev eth0
ip -n $inet link set eth0 up && ip -n $inet link set lo up
ip -n $inet route add default via $host
ip netns exec $inet bin/tandem dev ghfake --listen $gh:9000 --app-id 1 --app-key "$demo/app.pem" \
  --webhook-secret-file "$demo/webhook-secret" --webhook-url http://$host:8080/webhook \
  2>"$demo/ghfake.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$demo/webhook-secret" ] && break; sleep 0.1; done
cat >"$demo/config.yaml" <<EOF
listen: $host:8080
database: $demo/tandem.db
github:
  api_url: http://$gh:9000/
  app_id: 1
  private_key_file: app.pem
  webhook_secret_file: webhook-secret
agent:
  emulate: [arm64]
EOF
# Four weeks of made-up history (several orgs, both architectures, profiles),
# so that the dashboard, `tandem insights` and `tandem rightsize` show something.
bin/tandem dev seed --config "$demo/config.yaml"
# The operator commands find tandem there.
export TANDEM_SERVER=http://$host:8080
echo
echo '$ tandem up --config /var/tmp/tandem-demo/config.yaml &'
bin/tandem --log-level info up --config "$demo/config.yaml" 2>"$demo/tandem.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf $TANDEM_SERVER/healthz >/dev/null && break; sleep 0.1; done
curl -sf $TANDEM_SERVER/healthz >/dev/null || { cat "$demo/tandem.log"; exit 1; }
# tandem up keeps an admin API token in its data dir; the CLI finds it there.
api() { curl -sf -H "Authorization: Bearer $(cat /var/lib/tandem/api-admin-token)" "$TANDEM_SERVER$1"; }

echo '# GitHub (ghfake) queues a job with runs-on: tandem-arm64-1cpu-0.25gb and sends the webhook'
curl -sf -X POST http://$gh:9000/_ghfake/installations \
  -d '{"account":"acme","account_type":"Organization","repos":["acme/app"]}' >/dev/null
job=$(curl -sf -X POST http://$gh:9000/_ghfake/jobs \
  -d '{"repo":"acme/app","labels":["tandem-arm64-1cpu-0.25gb"],"script":"echo hello from a $(uname -m) runner VM, kernel $(uname -r)"}' |
  jq -r '.job_ids[0]')
for _ in $(seq 600); do
  state=$(api /api/v1/jobs/$job | jq -r .state)
  case $state in completed|failed|cancelled|unschedulable|lost) break ;; esac
  sleep 0.1
done
echo "\$ tandem job $job   # Tandem's view: every transition, timestamped"
bin/tandem job "$job"
echo '# the job'"'"'s output, as the runner in the VM reported it to GitHub:'
curl -sf http://$gh:9000/_ghfake/jobs | jq -r ".[] | select(.id == $job) | .output"
echo '$ tandem hosts'
bin/tandem hosts
[ "$state" = completed ]
echo '$ tandem rightsize   # the seeded history: sizes asked against what the jobs used'
bin/tandem rightsize | sed -n 1,6p
echo
echo "The dashboard: http://$host:8080/ (from this machine; log in with the token in /var/lib/tandem/api-admin-token)"
if [ -t 0 ]; then
  echo 'Tandem keeps running for you to look around; Ctrl-C ends the demo.'
  wait
fi
