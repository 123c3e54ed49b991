#!/bin/bash
# usage: pubrun.sh LABEL BIN ROUND
label=$1; bin=$2; round=$3
dp=/tmp/lgpub/$label-$round; rm -rf $dp; mkdir -p $dp
timeout 400 /work/main/target/release/hushwire-loadgen --server-bin $bin --server-cpu 1 --generator-cpu 0 --keep-data --data-parent $dp --json run --devices 10000 --rate ${RATE:-6000} --warmup-secs 2 --duration-secs 20 --drain-secs 5 > $dp/report.json 2> $dp/err.log
db=$(ls -d $dp/hushwire-bench-*/data)/hushwire.db
python3 - "$dp/report.json" "$db" "$label" "$round" <<'PY'
import json,sys,sqlite3
rep=json.load(open(sys.argv[1]))['report']
c=sqlite3.connect(sys.argv[2])
t0=c.execute("select min(expires_at_ms) from dedup").fetchone()[0]-2592000000
pubs=[(e,p-t0) for e,p in c.execute("select epoch,published_at_ms from directory_epochs")]
dl=rep['delivery_latency']
print(sys.argv[3], sys.argv[4], 'window/s %.0f'%rep['window']['delivered_per_s'], 'p50 %.2f p99 %.2f max %.1f'%(dl['p50_ms'],dl['p99_ms'],dl['max_ms']), 'cpu %.1f'%rep['server_cpu']['percent'], 'us/msg', rep['server_cpu_us_per_msg'], 'epochs at s after traffic start:', [(e, round(d/1000,1)) for e,d in pubs])
PY
