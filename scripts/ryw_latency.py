"""What read-your-writes costs: the latency of a write, and of the read right after it,
through an rw_split listener with read_your_writes on and one with it off (whose read may
miss the write), and of a read with no write before it.

    ryw_latency.py PORT_ON PORT_OFF [ROUNDS]

Prints the median and 90th percentile of each, in microseconds.
"""

import statistics
import sys
import time

import pymysql


def measure(port, rounds):
    c = pymysql.connect(host="127.0.0.1", port=port, user="sbtest", password="sbtest",
                        database="sbtest", autocommit=True)
    cur = c.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS ryw (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
    writes, reads_after, reads_alone, missed = [], [], [], 0
    for i in range(rounds):
        t0 = time.perf_counter()
        cur.execute("INSERT INTO ryw (v) VALUES (%s)", (i,))
        t1 = time.perf_counter()
        cur.execute("SELECT COUNT(*) FROM ryw WHERE v = %s", (i,))
        t2 = time.perf_counter()
        if cur.fetchone()[0] == 0:
            missed += 1
        cur.execute("SELECT COUNT(*) FROM ryw WHERE v = %s", (i,))
        t3 = time.perf_counter()
        writes.append(t1 - t0)
        reads_after.append(t2 - t1)
        reads_alone.append(t3 - t2)
    c.close()
    return writes, reads_after, reads_alone, missed


def figures(samples):
    us = sorted(s * 1e6 for s in samples)
    return statistics.median(us), us[int(len(us) * 0.9)]


def main():
    on, off = int(sys.argv[1]), int(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    print(f"{'read_your_writes':<18} {'write p50/p90':>16} {'read after p50/p90':>20} "
          f"{'next read p50/p90':>19} {'reads missing the write':>24}")
    for name, port in (("on", on), ("off", off)):
        w, ra, rn, missed = measure(port, rounds)
        (w50, w90), (a50, a90), (n50, n90) = figures(w), figures(ra), figures(rn)
        print(f"{name:<18} {w50:>7.0f} / {w90:<6.0f} {a50:>9.0f} / {a90:<8.0f} "
              f"{n50:>8.0f} / {n90:<8.0f} {missed:>10} of {rounds}")


main()
