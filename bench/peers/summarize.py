#!/usr/bin/env python3
"""Summary of one bench/compare.sh run: summary.csv, summary.json, a table on stdout and,
as the very last line, the ratios line of the contract:

  ratios: sustained_vs_ejabberd=<x> sustained_vs_mosquitto=<y> p99_vs_ejabberd=<z> kib_per_idle_conn=<k>

Usage: summarize.py RESULTS_DIR [ELAPSED_SECONDS]
A figure that could not be measured is printed as n/a.
"""
import csv
import json
import os
import sys

D = sys.argv[1]
elapsed = int(sys.argv[2]) if len(sys.argv) > 2 else None


def load(name):
    try:
        with open(os.path.join(D, name + '.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lat(report, key='delivery_latency'):
    return (report or {}).get(key) or {}


rows = []
summary = {'elapsed_s': elapsed, 'targets': {}}
for target in ('hushwire', 'ejabberd', 'mosquitto'):
    mx, idle = load(target + '_max'), load(target + '_idle')
    best = (mx or {}).get('best') or {}
    rep = (idle or {}).get('report') or {}
    t = {
        'sustained_msgs_per_s': (mx or {}).get('sustained_rate'),
        'first_failing_rate': (mx or {}).get('first_failing_rate'),
        'delivered_per_s_at_sustained': (best.get('window') or {}).get('delivered_per_s'),
        'p50_ms_at_sustained': lat(best).get('p50_ms'),
        'p99_ms_at_sustained': lat(best).get('p99_ms'),
        'server_cpu_pct_at_sustained': (best.get('server_cpu') or {}).get('percent'),
        'server_cpu_us_per_msg': best.get('server_cpu_us_per_msg'),
        'generator_cpu_pct_at_sustained': (best.get('generator_cpu') or {}).get('percent'),
        'idle_rss_bytes_per_conn': rep.get('slope_rss_bytes_per_conn'),
        'idle_points': [
            {'connections': p['connections'], 'vm_rss_kib': p['mem']['vm_rss_kib'],
             'rss_bytes_per_conn': p['rss_bytes_per_conn']}
            for p in rep.get('points', [])
        ],
        'probes': [
            {'rate': p['rate'], 'sustained': p['sustained'],
             'delivered_per_s': p['report']['window']['delivered_per_s'],
             'p50_ms': p['report']['delivery_latency']['p50_ms'],
             'p99_ms': p['report']['delivery_latency']['p99_ms'],
             'lost': p['report']['lost'],
             'server_cpu_pct': (p['report'].get('server_cpu') or {}).get('percent'),
             'loadavg_after': p['report'].get('loadavg_after')}
            for p in (mx or {}).get('probes', [])
        ],
    }
    summary['targets'][target] = t
    for p in t['probes']:
        rows.append({'target': target, 'scenario': 'max_probe', 'offered': p['rate'],
                     'delivered_per_s': p['delivered_per_s'], 'p50_ms': p['p50_ms'],
                     'p99_ms': p['p99_ms'], 'lost': p['lost'], 'sustained': p['sustained'],
                     'server_cpu_pct': p['server_cpu_pct'], 'connections': '', 'rss_kib': ''})
    for p in t['idle_points']:
        rows.append({'target': target, 'scenario': 'idle', 'offered': '', 'delivered_per_s': '',
                     'p50_ms': '', 'p99_ms': '', 'lost': '', 'sustained': '', 'server_cpu_pct': '',
                     'connections': p['connections'], 'rss_kib': p['vm_rss_kib']})

at = load('hushwire_at_ejabberd_rate')
at_rep = (at or {}).get('report') or {}
summary['hushwire_at_ejabberd_rate'] = {
    'rate': at_rep.get('offered_rate'),
    'delivered_per_s': (at_rep.get('window') or {}).get('delivered_per_s'),
    'p50_ms': lat(at_rep).get('p50_ms'),
    'p99_ms': lat(at_rep).get('p99_ms'),
    'lost': at_rep.get('lost'),
}
if at_rep:
    rows.append({'target': 'hushwire', 'scenario': 'at_ejabberd_rate',
                 'offered': at_rep.get('offered_rate'),
                 'delivered_per_s': (at_rep.get('window') or {}).get('delivered_per_s'),
                 'p50_ms': lat(at_rep).get('p50_ms'), 'p99_ms': lat(at_rep).get('p99_ms'),
                 'lost': at_rep.get('lost'), 'sustained': '',
                 'server_cpu_pct': (at_rep.get('server_cpu') or {}).get('percent'),
                 'connections': '', 'rss_kib': ''})
tsung = load('tsung_ejabberd')
if tsung:
    summary['tsung_ejabberd'] = tsung
# Full run only: the offline backlog drain (1M: Hushwire and Mosquitto; 100k: all three)
# and Hushwire's sustained rate with real MLS.
BACKLOG_KEYS = ('messages', 'reconnecting_devices', 'per_device', 'drain_s', 'drain_msgs_per_s',
                'reconnect_s', 'lost', 'duplicates', 'server_us_per_msg', 'fill_msgs_per_s')
backlogs = {}
for target in ('hushwire', 'ejabberd', 'mosquitto'):
    for size, suffix in (('1m', '_backlog'), ('100k', '_backlog_100k')):
        rep = (load(target + suffix) or {}).get('report')
        if rep:
            b = {k: rep.get(k) for k in BACKLOG_KEYS}
            mem = rep.get('server_mem_full') or {}
            b['server_rss_kib_queued'] = mem.get('vm_rss_kib')
            backlogs.setdefault(size, {})[target] = b
            rows.append({'target': target, 'scenario': 'backlog_' + size, 'offered': b['messages'],
                         'delivered_per_s': b['drain_msgs_per_s'], 'p50_ms': '', 'p99_ms': '',
                         'lost': b['lost'], 'sustained': '',
                         'server_cpu_pct': (rep.get('drain_server_cpu') or {}).get('percent'),
                         'connections': b['reconnecting_devices'], 'rss_kib': b['server_rss_kib_queued']})
if backlogs:
    summary['backlog'] = backlogs
backlog = backlogs.get('1m', {}).get('hushwire')
if backlog:
    summary['hushwire_backlog'] = backlog
real_mls = load('hushwire_max_real_mls')
if real_mls:
    summary['hushwire_real_mls'] = {'sustained_msgs_per_s': real_mls.get('sustained_rate'),
                                    'first_failing_rate': real_mls.get('first_failing_rate')}


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


T = summary['targets']
hw, ej, mq = T['hushwire'], T['ejabberd'], T['mosquitto']
ratios = {
    'sustained_vs_ejabberd': ratio(hw['sustained_msgs_per_s'], ej['sustained_msgs_per_s']),
    'sustained_vs_mosquitto': ratio(hw['sustained_msgs_per_s'], mq['sustained_msgs_per_s']),
    'p99_vs_ejabberd': ratio(summary['hushwire_at_ejabberd_rate']['p99_ms'], ej['p99_ms_at_sustained']),
    'kib_per_idle_conn': (hw['idle_rss_bytes_per_conn'] / 1024
                          if isinstance(hw['idle_rss_bytes_per_conn'], (int, float)) else None),
}
summary['ratios'] = ratios

with open(os.path.join(D, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
with open(os.path.join(D, 'summary.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=['target', 'scenario', 'offered', 'delivered_per_s', 'p50_ms',
                                      'p99_ms', 'lost', 'sustained', 'server_cpu_pct',
                                      'connections', 'rss_kib'])
    w.writeheader()
    w.writerows(rows)


def fmt(x, nd=1):
    if x is None:
        return 'n/a'
    if isinstance(x, float):
        return f'{x:.{nd}f}'
    return str(x)


print()
print(f"{'':10} {'sustained/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU %':>6} {'us/msg':>7} {'B/idle conn':>12}")
for name, t in T.items():
    print(f"{name:10} {fmt(t['sustained_msgs_per_s']):>12} {fmt(t['p50_ms_at_sustained'], 2):>8} "
          f"{fmt(t['p99_ms_at_sustained'], 2):>8} {fmt(t['server_cpu_pct_at_sustained']):>6} "
          f"{fmt(t['server_cpu_us_per_msg']):>7} {fmt(t['idle_rss_bytes_per_conn']):>12}")
h = summary['hushwire_at_ejabberd_rate']
print(f"hushwire at ejabberd's sustained rate ({fmt(h['rate'])}/s): p50 {fmt(h['p50_ms'], 2)} ms, "
      f"p99 {fmt(h['p99_ms'], 2)} ms, lost {fmt(h['lost'])}")
if tsung:
    print(f"tsung cross-check (ejabberd): {json.dumps(tsung)}")
for size, by_target in backlogs.items():
    for name, b in by_target.items():
        print(f"{name} backlog {size}: {fmt(b['messages'])} messages to {fmt(b['reconnecting_devices'])} "
              f"reconnecting clients drained in {fmt(b['drain_s'], 2)} s = {fmt(b['drain_msgs_per_s'], 0)} msgs/s "
              f"(fill {fmt(b['fill_msgs_per_s'], 0)} msgs/s), lost {fmt(b['lost'])}")
if real_mls:
    m = summary['hushwire_real_mls']
    print(f"hushwire with real client-side MLS in the generator: sustained {fmt(m['sustained_msgs_per_s'])} msgs/s "
          f"(first failing {fmt(m['first_failing_rate'])})")
print('ratios: ' + ' '.join(
    f"{k}={'n/a' if v is None else (f'{v:.2f}' if k != 'kib_per_idle_conn' else f'{v:.1f}')}"
    for k, v in ratios.items()))
